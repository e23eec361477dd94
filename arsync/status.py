"""What ``arsync status`` shows: one row per connection."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from rich.console import Group
from rich.table import Table
from sqlalchemy.orm import Session
from sqlmodel import col

from arsync.config import Config, TenantConfig
from collect.dunning import suspend_tags
from sync.models import (
    Connection,
    CustomerTag,
    DunningMessage,
    DunningTask,
    HostedLinkRow,
    JournalEntry,
    Payout,
    ProcessorCursor,
    ProcessorPayment,
    PullProgress,
    QuarantinedRecord,
    SavedPaymentMethod,
    SyncCursor,
    SyncRun,
)
from sync.store import TABLES


@dataclass(frozen=True)
class ConnectionStatus:
    name: str
    tenant: str
    state: str
    reason: str | None
    last_run: SyncRun | None
    last_error: str | None
    cursor: datetime | None
    in_progress: list[str]
    counts: dict[str, int]
    quarantined: int
    access_expires_at: datetime | None
    refresh_expires_at: datetime | None
    parked_until: datetime | None


def connection_status(session: Session, name: str, tenant: str) -> ConnectionStatus:
    row = session.get(Connection, name)
    last_run = session.execute(
        sa.select(SyncRun).where(col(SyncRun.connection_id) == name).order_by(col(SyncRun.id).desc()).limit(1)
    ).scalar_one_or_none()
    last_error = session.execute(
        sa.select(col(SyncRun.error))
        .where(col(SyncRun.connection_id) == name, col(SyncRun.error).is_not(None))
        .order_by(col(SyncRun.id).desc())
        .limit(1)
    ).scalar_one_or_none()
    cursors = list(
        session.execute(
            sa.select(col(SyncCursor.synced_through)).where(col(SyncCursor.connection_id) == name)
        ).scalars()
    )
    progress = [
        f"{p.kind} {p.entity} at {p.resume or 'start'}"
        for p in session.execute(sa.select(PullProgress).where(col(PullProgress.connection_id) == name)).scalars()
    ]
    counts = {
        entity.value: int(
            session.execute(
                sa.select(sa.func.count()).select_from(table).where(table.connection_id == name)
            ).scalar_one()
        )
        for entity, table in TABLES.items()
    }
    quarantined = int(
        session.execute(
            sa.select(sa.func.count())
            .select_from(QuarantinedRecord)
            .where(col(QuarantinedRecord.connection_id) == name, col(QuarantinedRecord.resolved_at).is_(None))
        ).scalar_one()
    )
    return ConnectionStatus(
        name=name,
        tenant=tenant,
        state=row.status if row else "unknown",
        reason=row.status_reason if row else None,
        last_run=last_run,
        last_error=last_error,
        cursor=min((c for c in cursors if c is not None), default=None),
        in_progress=progress,
        counts=counts,
        quarantined=quarantined,
        access_expires_at=row.access_expires_at if row else None,
        refresh_expires_at=row.refresh_expires_at if row else None,
        parked_until=row.parked_until if row else None,
    )


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    delta = value - now
    hours = delta.total_seconds() / 3600
    rel = f"in {hours:.1f}h" if hours >= 0 else f"{-hours:.1f}h ago"
    return f"{value:%Y-%m-%d %H:%M} ({rel})"


@dataclass(frozen=True)
class PaymentsStatus:
    tenant: str
    cursor: str | None
    cursor_at: datetime | None
    enrolled: int
    open_setup_links: int
    charges_waiting: int
    """Journaled, not settled (pending, in flight, or retries of soft declines)."""
    not_in_ledger: dict[str, Decimal]
    """Per currency: charged and not yet in the ledger's balances."""
    declined: dict[str, int]
    """Last 30 days, per state."""
    returned: int
    payouts_waiting_lines: int
    postings_waiting: int
    postings_parked: int


def payments_status(session: Session, tenant: str, connections: list[str], now: datetime) -> PaymentsStatus:
    cursor = session.get(ProcessorCursor, tenant)

    def count(query: sa.Select[Any]) -> int:
        return int(session.execute(query).scalar_one())

    not_in_ledger: dict[str, Decimal] = {}
    for currency, amount in session.execute(
        sa.select(col(ProcessorPayment.currency), col(ProcessorPayment.amount)).where(
            col(ProcessorPayment.tenant_id) == tenant,
            col(ProcessorPayment.state).in_(("succeeded", "processing")),
            col(ProcessorPayment.applied_in_ledger_at).is_(None),
            col(ProcessorPayment.returned).is_(False),
        )
    ):
        not_in_ledger[currency] = not_in_ledger.get(currency, Decimal(0)) + amount
    declined = dict(
        session.execute(
            sa.select(col(ProcessorPayment.state), sa.func.count())
            .where(
                col(ProcessorPayment.tenant_id) == tenant,
                col(ProcessorPayment.state).in_(("soft_decline", "hard_decline", "requires_action")),
                col(ProcessorPayment.created_at) >= now - timedelta(days=30),
            )
            .group_by(col(ProcessorPayment.state))
        ).all()
    )
    return PaymentsStatus(
        tenant=tenant,
        cursor=cursor.last_event_id if cursor else None,
        cursor_at=cursor.last_event_created if cursor else None,
        enrolled=count(
            sa.select(sa.func.count())
            .select_from(SavedPaymentMethod)
            .where(col(SavedPaymentMethod.connection_id).in_(connections), col(SavedPaymentMethod.active).is_(True))
        ),
        open_setup_links=count(
            sa.select(sa.func.count())
            .select_from(HostedLinkRow)
            .where(
                col(HostedLinkRow.tenant_id) == tenant,
                col(HostedLinkRow.mode) == "setup",
                col(HostedLinkRow.completed_at).is_(None),
            )
        ),
        charges_waiting=count(
            sa.select(sa.func.count())
            .select_from(JournalEntry)
            .where(
                col(JournalEntry.tenant_id) == tenant,
                col(JournalEntry.kind) == "charge",
                col(JournalEntry.status).in_(("pending", "in_flight")),
            )
        ),
        not_in_ledger=not_in_ledger,
        declined={str(k): int(v) for k, v in declined.items()},
        returned=count(
            sa.select(sa.func.count())
            .select_from(ProcessorPayment)
            .where(col(ProcessorPayment.tenant_id) == tenant, col(ProcessorPayment.returned).is_(True))
        ),
        postings_waiting=count(
            sa.select(sa.func.count())
            .select_from(JournalEntry)
            .where(
                col(JournalEntry.tenant_id) == tenant,
                col(JournalEntry.kind).in_(("posting", "apply_credit")),
                col(JournalEntry.status).in_(("pending", "in_flight")),
            )
        ),
        postings_parked=count(
            sa.select(sa.func.count())
            .select_from(JournalEntry)
            .where(
                col(JournalEntry.tenant_id) == tenant,
                col(JournalEntry.kind).in_(("posting", "apply_credit")),
                col(JournalEntry.status) == "failed",
            )
        ),
        payouts_waiting_lines=count(
            sa.select(sa.func.count())
            .select_from(Payout)
            .where(col(Payout.tenant_id) == tenant, col(Payout.status) == "paid", col(Payout.lines_loaded_at).is_(None))
        ),
    )


def _payments_block(p: PaymentsStatus, now: datetime) -> Table:
    block = Table(title=f"{p.tenant} payments", show_header=False, title_justify="left")
    block.add_column("field", style="bold")
    block.add_column("value", overflow="fold")
    events = "never read" if p.cursor is None else f"{p.cursor} {_when(p.cursor_at, now)}"
    if p.cursor_at is not None and now - p.cursor_at > timedelta(days=25):
        events += "\n[bold yellow]the processor keeps events 30 days: read them soon[/]"
    block.add_row("events read up to", events)
    block.add_row("enrolled methods", f"{p.enrolled} ({p.open_setup_links} setup link(s) not completed)")
    block.add_row("charges waiting", str(p.charges_waiting))
    block.add_row(
        "charged, not in ledger",
        ", ".join(f"{amount} {currency}" for currency, amount in sorted(p.not_in_ledger.items())) or "-",
    )
    block.add_row("declined (30 days)", ", ".join(f"{k}: {v}" for k, v in sorted(p.declined.items())) or "-")
    block.add_row("bank debits returned", str(p.returned))
    block.add_row("paid payouts without lines", str(p.payouts_waiting_lines))
    parked = f"{p.postings_parked} parked: see `arsync reconcile report`" if p.postings_parked else "0 parked"
    block.add_row("write-back", f"{p.postings_waiting} waiting, {parked}")
    return block


@dataclass(frozen=True)
class DunningStatus:
    tenant: str
    paused: bool
    messages: dict[str, int]
    """Message entries by journal status: pending (waiting for their window or a retry), done, failed."""
    sent_today: int
    failed: list[str]
    """The latest messages given up on, with why (undeliverable, a template problem)."""
    open_tasks: int
    suspended: int
    fees_waiting: int


def dunning_status(session: Session, tenant: TenantConfig, now: datetime, suspend_tags: Iterable[str]) -> DunningStatus:
    messages = {
        str(status): int(n)
        for status, n in session.execute(
            sa.select(col(JournalEntry.status), sa.func.count())
            .where(col(JournalEntry.tenant_id) == tenant.name, col(JournalEntry.kind) == "notify")
            .group_by(col(JournalEntry.status))
        )
    }
    midnight = datetime.combine(now.astimezone(tenant.tzinfo).date(), time(0), tzinfo=tenant.tzinfo)
    sent_today = session.execute(
        sa.select(sa.func.count()).where(
            col(DunningMessage.tenant_id) == tenant.name, col(DunningMessage.sent_at) >= midnight
        )
    ).scalar_one()
    failed = [
        f"{key}: {error}"
        for key, error in session.execute(
            sa.select(col(JournalEntry.key), col(JournalEntry.error))
            .where(
                col(JournalEntry.tenant_id) == tenant.name,
                col(JournalEntry.kind) == "notify",
                col(JournalEntry.status) == "failed",
            )
            .order_by(col(JournalEntry.updated_at).desc())
            .limit(5)
        )
    ]
    connections = [c.name for c in tenant.connections]
    open_tasks = session.execute(
        sa.select(sa.func.count()).where(col(DunningTask.tenant_id) == tenant.name, col(DunningTask.status) == "open")
    ).scalar_one()
    suspended = session.execute(
        sa.select(sa.func.count(sa.distinct(col(CustomerTag.customer_external_id)))).where(
            col(CustomerTag.connection_id).in_(connections), col(CustomerTag.tag).in_(list(suspend_tags))
        )
    ).scalar_one()
    fees_waiting = session.execute(
        sa.select(sa.func.count()).where(
            col(JournalEntry.tenant_id) == tenant.name,
            col(JournalEntry.kind) == "posting",
            col(JournalEntry.subject).like("late_fee:%"),
            col(JournalEntry.status).in_(("pending", "in_flight")),
        )
    ).scalar_one()
    paused = tenant.dunning is not None and tenant.dunning.policy.paused
    return DunningStatus(
        tenant.name, paused, messages, int(sent_today), failed, int(open_tasks), int(suspended), int(fees_waiting)
    )


def _dunning_block(d: DunningStatus) -> Table:
    block = Table(title=f"{d.tenant} dunning", show_header=False, title_justify="left")
    block.add_column("field", style="bold")
    block.add_column("value", overflow="fold")
    if d.paused:
        block.add_row("state", "[bold yellow]PAUSED[/] (tenants.T.dunning.paused)")
    waiting = d.messages.get("pending", 0) + d.messages.get("in_flight", 0)
    block.add_row(
        "messages",
        f"{d.sent_today} sent today, {waiting} waiting, {d.messages.get('done', 0)} done, "
        f"{d.messages.get('failed', 0)} failed",
    )
    if d.failed:
        block.add_row("latest failures", "\n".join(d.failed))
    block.add_row("open tasks", f"{d.open_tasks} (see `arsync worklist`)")
    block.add_row("suspended customers", str(d.suspended))
    block.add_row("late fees waiting for write-back", str(d.fees_waiting))
    return block


def render_status(session: Session, config: Config, now: datetime) -> Group:
    """One block per connection, then one per tenant taking payments: field on the left, value on the right."""
    blocks: list[Table] = []
    for conn in config.connections():
        s = connection_status(session, conn.name, conn.tenant)
        state = s.state if not s.reason else f"{s.state}: {s.reason}"
        if s.state == "needs_reauth":
            state = f"[bold red]NEEDS RE-AUTHORISATION[/]: {s.reason}\nrun `arsync connect {conn.name}`"
        if s.parked_until is not None and s.parked_until > now:
            state += f"\n[bold yellow]PARKED[/] by the vendor's rate limit until {_when(s.parked_until, now)}"
        run = "never"
        if s.last_run is not None:
            r = s.last_run
            run = (
                f"{r.kind} {r.status} {_when(r.finished_at or r.started_at, now)}: "
                f"{r.rows_written} written, {r.rows_unchanged} unchanged, "
                f"{r.rows_deleted} deleted, {r.rows_quarantined} quarantined, {r.api_calls} API calls"
            )
        cursor = _when(s.cursor, now)
        if s.in_progress:
            cursor += "\nresumable: " + "; ".join(s.in_progress)
        block = Table(title=f"{conn.name} ({conn.tenant}, {conn.kind})", show_header=False, title_justify="left")
        block.add_column("field", style="bold")
        block.add_column("value", overflow="fold")
        block.add_row("state", state)
        block.add_row("last run", run)
        block.add_row("cursor", cursor)
        block.add_row("records", ", ".join(f"{k}: {v}" for k, v in s.counts.items()))
        block.add_row("quarantined", str(s.quarantined))
        block.add_row("last error", s.last_error or "-")
        block.add_row("access token", _when(s.access_expires_at, now))
        block.add_row("refresh token", _when(s.refresh_expires_at, now))
        blocks.append(block)
    for tenant in config.tenants:
        if tenant.payments is not None:
            status = payments_status(session, tenant.name, [c.name for c in tenant.connections], now)
            blocks.append(_payments_block(status, now))
        if tenant.dunning is not None:
            tags = suspend_tags(tenant.dunning.policy)
            blocks.append(_dunning_block(dunning_status(session, tenant, now, tags)))
    return Group(*blocks)
