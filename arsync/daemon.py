"""``arsync run``: every connection synced on its interval, one run at a time.

Tenants that take payments also get the processor's events read on their
interval (with due charge retries and refunds carried out after, then
write-back where configured), and the day's auto-pay run at ``charge_hour``
in their own time zone. Tenants with dunning get the day's dunning run at
``run_hour`` in their time zone, and a send of waiting messages every
quarter hour (each goes when its send window opens).

SIGHUP reloads the config file: a valid one replaces the running config and
the schedule; an invalid one is logged with its problems and changes nothing.

SIGTERM and SIGINT set the app's stop event: the running sync finishes the
page whose transaction is open, commits it and returns; the scheduler then
shuts down and the process exits 0. The next start resumes from there.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import Any, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from arsync.bootstrap import App
from arsync.config import Config, ConfigError
from arsync.reconciling import ReconcileRun
from collect.processor_events import FollowReport

log = logging.getLogger("arsync.daemon")
T = TypeVar("T")
SEND_INTERVAL_MINUTES = 15
"""How often messages waiting for their send window (or a retry) are looked at."""


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def sync_job(app: App, name: str) -> None:
    if app.stop.is_set():
        return
    try:
        summary = app.sync_engine(name).sync(app.source(name))
    except Exception:
        log.exception("sync crashed", extra={"fields": {"connection": name}})
        return
    total = summary.total()
    log.info(
        "sync %s",
        summary.status,
        extra={
            "fields": {
                "connection": name,
                "run_id": summary.run_id,
                "status": summary.status,
                "written": total.written,
                "unchanged": total.unchanged,
                "deleted": total.deleted,
                "quarantined": total.quarantined,
                "api_calls": summary.api_calls,
                "error": summary.error,
            }
        },
    )


def _guarded(what: str, tenant: str, body: Callable[[], T]) -> T | None:
    """Run one job's body; a crash is logged with its traceback and the daemon goes on to its next job.

    Every charge, refund and posting inside is journaled before its call, so a crash leaves it in flight
    (its outcome looked up next time), never lost.
    """
    try:
        return body()
    except Exception:
        log.exception("%s crashed", what, extra={"fields": {"tenant": tenant}})
        return None


def follow_job(app: App, tenant: str) -> None:
    """The processor's events, then the charges and refunds that are due (retries of soft declines)."""
    if app.stop.is_set():
        return

    def body() -> tuple[FollowReport, int, int]:
        collector = app.collector(tenant)
        report, enrolled = collector.follow()
        return report, enrolled, len(collector.work())

    done = _guarded("payments follow", tenant, body)
    if done is None:
        return
    report, enrolled, settled = done
    if any(c.writeback is not None for c in app.config.tenant(tenant).connections):
        reconcile_job(app, tenant)
    log.info(
        "payments followed",
        extra={
            "fields": {
                "tenant": tenant,
                "events": report.applied,
                "by_kind": report.by_kind,
                "payouts_loaded": report.payouts_loaded,
                "enrolments": enrolled,
                "settled": settled,
                "warnings": report.warnings,
            }
        },
    )


def reconcile_job(app: App, tenant: str) -> None:
    """Write-back: what the events brought in, into the books."""
    if app.stop.is_set():
        return

    def body() -> tuple[list[str], ReconcileRun | None]:
        reconciler = app.reconciler(tenant)
        problems = reconciler.account_problems()
        return problems, None if problems else reconciler.run()

    done = _guarded("reconcile", tenant, body)
    if done is None:
        return
    problems, run = done
    if run is None:
        log.error(
            "write-back accounts do not match the ledger", extra={"fields": {"tenant": tenant, "problems": problems}}
        )
        return
    log.info(
        "reconciled",
        extra={
            "fields": {
                "tenant": tenant,
                "echoes": run.echoes,
                "journaled": run.derived.total(),
                "outcomes": run.counts(),
            }
        },
    )


def charge_job(app: App, tenant: str) -> None:
    """The day's auto-pay: plan, journal, charge."""
    if app.stop.is_set():
        return
    result = _guarded("auto-pay run", tenant, lambda: app.collector(tenant).run())
    if result is None:
        return
    log.info(
        "auto-pay run",
        extra={
            "fields": {
                "tenant": tenant,
                "date": result.plan.today.isoformat(),
                "examined": result.plan.examined,
                "planned": len(result.plan.items),
                "journaled": result.recorded,
                "outcomes": result.counts(),
            }
        },
    )


def dunning_job(app: App, tenant: str) -> None:
    """The day's dunning: plan, journal, then send what the send window allows now."""
    if app.stop.is_set():
        return
    result = _guarded("dunning run", tenant, lambda: app.dunner(tenant).run())
    if result is None:
        return
    log.info(
        "dunning run",
        extra={
            "fields": {
                "tenant": tenant,
                "date": result.plan.today.isoformat(),
                "examined": result.plan.examined,
                "planned": dict(result.plan.counts()),
                "journaled": result.recorded,
                "outcomes": dict(result.counts()),
            }
        },
    )


def send_job(app: App, tenant: str) -> None:
    """Messages and webhooks decided earlier whose time has come (the send window opened, a retry is due)."""
    if app.stop.is_set():
        return
    settled = _guarded("dunning send", tenant, lambda: app.dunner(tenant).send())
    if settled:
        log.info("dunning sent", extra={"fields": {"tenant": tenant, "settled": len(settled)}})


def build_scheduler(app: App) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    schedule_jobs(scheduler, app)
    return scheduler


def schedule_jobs(scheduler: BackgroundScheduler, app: App) -> None:
    """Add every job the config calls for (after a reload, the old ones are removed first)."""
    now = app.clock()
    for conn in app.config.connections():
        scheduler.add_job(
            sync_job,
            "interval",
            args=(app, conn.name),
            minutes=conn.sync_interval_minutes,
            id=f"sync:{conn.name}",
            max_instances=1,
            coalesce=True,
            next_run_time=now + timedelta(seconds=1),
        )
    for tenant in app.config.tenants:
        if tenant.dunning is not None:
            scheduler.add_job(
                dunning_job,
                CronTrigger(hour=tenant.dunning.policy.run_hour, timezone=tenant.tzinfo),
                args=(app, tenant.name),
                id=f"dunning:{tenant.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=6 * 3600,
            )
            scheduler.add_job(
                send_job,
                "interval",
                args=(app, tenant.name),
                minutes=SEND_INTERVAL_MINUTES,
                id=f"send:{tenant.name}",
                max_instances=1,
                coalesce=True,
                next_run_time=now + timedelta(seconds=3),
            )
        if tenant.payments is None:
            continue
        scheduler.add_job(
            follow_job,
            "interval",
            args=(app, tenant.name),
            minutes=tenant.payments.follow_interval_minutes,
            id=f"payments:{tenant.name}",
            max_instances=1,
            coalesce=True,
            next_run_time=now + timedelta(seconds=2),
        )
        scheduler.add_job(
            charge_job,
            CronTrigger(hour=tenant.payments.charge_hour, timezone=tenant.tzinfo),
            args=(app, tenant.name),
            id=f"charge:{tenant.name}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=6 * 3600,
        )


def reload_config(app: App, scheduler: BackgroundScheduler, load: Callable[[], Config]) -> bool:
    """Swap in a new config if it is valid, and reschedule; an invalid one is logged and changes nothing.

    Running jobs finish with the config they started with; the next ones use the new one.
    """
    try:
        config = load()
    except ConfigError as exc:
        log.error(
            "config reload refused; the running config stays",
            extra={"fields": {"problems": [str(p) for p in exc.problems]}},
        )
        return False
    if config.database.url != app.config.database.url:
        log.error("config reload refused: the database cannot change while running; restart instead")
        return False
    app.config = config
    app.sources.clear()
    app.processors.clear()
    scheduler.remove_all_jobs()
    schedule_jobs(scheduler, app)
    log.info("config reloaded", extra={"fields": {"jobs": sorted(job.id for job in scheduler.get_jobs())}})
    return True


def run_daemon(app: App, load: Callable[[], Config] | None = None) -> int:
    """Run the scheduler until SIGTERM or SIGINT; SIGHUP reloads the config through ``load``."""
    configure_logging(app.config.daemon.log_format)
    stopped = threading.Event()
    reload = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        app.stop.set()
        stopped.set()

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        reload.set()
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if load is not None:
        signal.signal(signal.SIGHUP, on_hangup)
    scheduler = build_scheduler(app)
    scheduler.start()
    log.info(
        "started",
        extra={"fields": {"connections": [c.name for c in app.config.connections()]}},
    )
    while True:
        stopped.wait()
        if not reload.is_set() or app.stop.is_set():
            break
        reload.clear()
        stopped.clear()
        assert load is not None
        reload_config(app, scheduler, load)
    grace = app.config.daemon.shutdown_grace_seconds
    closing = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
    closing.start()
    closing.join(timeout=grace)
    if closing.is_alive():
        # The running page's transaction is rolled back by the exit; the next start resumes before it.
        log.warning("stopped before the running sync finished", extra={"fields": {"grace_seconds": grace}})
        return 1
    log.info("stopped")
    return 0
