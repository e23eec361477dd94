"""What ``arsync status`` shows: one row per connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from rich.console import Group
from rich.table import Table
from sqlalchemy.orm import Session
from sqlmodel import col

from arsync.config import Config
from sync.models import Connection, PullProgress, QuarantinedRecord, SyncCursor, SyncRun
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


def render_status(session: Session, config: Config, now: datetime) -> Group:
    """One block per connection: field on the left, value on the right."""
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
    return Group(*blocks)
