"""The pull engine: full pulls, incremental change feeds and backfills.

Rules (after dlt's incremental and singer-sdk's signposts):

* Each page is applied, and the progress that covers it recorded, in one
  transaction. A process killed at any line resumes from the last committed
  page; re-reading a page is harmless because upserts compare versions.
* The incremental cursor never moves past the time the pull began (the
  signpost), and the next run reads from ``cursor - overlap``.
* A backfill re-reads a window and never moves the cursor.
* A cursor older than the source's change horizon triggers a full re-pull
  followed by an id-set comparison that marks records deleted at the source;
  the deletion guard stops the run if that would delete most of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from connectors.base import Clock, ConnectorError, Entity, Page, RateLimitedError, RecordSource, Window
from sync import lease
from sync.models import Connection, PullProgress, SyncCursor, SyncRun
from sync.store import (
    ApplyCounts,
    apply_page,
    mark_deleted,
    missing_at_source,
    refresh_statistics,
    resolve_quarantine,
)

FULL, CATCHUP, BACKFILL = "full", "catchup", "backfill"


class _ParkedError(Exception):
    """The connection waits out a long rate limit (a vendor's daily quota)."""


class SyncInterruptedError(Exception):
    """A stop was requested; everything up to the last page is committed."""


class DeleteGuardError(ConnectorError):
    """A re-pull would mark most of a connection's records deleted."""


@dataclass(frozen=True)
class SyncPolicy:
    overlap: timedelta = timedelta(minutes=5)
    delete_guard_ratio: float = 0.5
    delete_guard_minimum: int = 20
    """Below this many live records the guard does not apply."""


@dataclass
class RunSummary:
    connection: str
    kind: str
    run_id: int
    status: str = "running"
    counts: dict[Entity, ApplyCounts] = field(default_factory=dict)
    api_calls: int = 0
    error: str | None = None

    def total(self) -> ApplyCounts:
        total = ApplyCounts()
        for counts in self.counts.values():
            total.add(counts)
        return total

    def describe(self) -> str:
        total = self.total()
        line = (
            f"{self.connection}: {self.kind} {self.status}: {total.written} written, {total.unchanged} unchanged, "
            f"{total.deleted} deleted, {total.quarantined} quarantined, {self.api_calls} API calls"
        )
        return f"{line}\n  {self.error}" if self.error else line


PageObserver = Callable[[Entity, ApplyCounts], None]


class SyncEngine:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Clock,
        *,
        policy: SyncPolicy | None = None,
        stop: threading.Event | None = None,
        on_page: PageObserver | None = None,
        owner: str | None = None,
        after_run: Callable[[Session], None] | None = None,
    ) -> None:
        self.owner = owner or lease.this_process()
        self.sessions = sessions
        self.clock = clock
        self.policy = policy or SyncPolicy()
        self.stop = stop or threading.Event()
        self.on_page = on_page
        self.after_run = after_run
        """Called in the transaction that closes a run which pulled (what was read may be ours: write-back's
        echoes are recognised there, so nothing counts a posted payment twice once its echo is in)."""

    # --- entry points ----------------------------------------------------------

    def sync(self, source: RecordSource, *, full: bool = False, entities: Sequence[Entity] | None = None) -> RunSummary:
        return self._run(source, "full" if full else "incremental", lambda s: self._sync(s, source, full, entities))

    def backfill(
        self,
        source: RecordSource,
        since: datetime | None,
        until: datetime | None,
        entities: Sequence[Entity] | None = None,
    ) -> RunSummary:
        window = Window(since, until)

        def body(summary: RunSummary) -> None:
            for entity in entities or source.entities:
                self._pull(summary, source, entity, BACKFILL, window)

        return self._run(source, "backfill", body)

    # --- run bookkeeping -------------------------------------------------------

    def _run(self, source: RecordSource, kind: str, body: Callable[[RunSummary], None]) -> RunSummary:
        calls_before = source.api_calls()
        with self.sessions.begin() as session:
            run = SyncRun(connection_id=source.connection, kind=kind, status="running", started_at=self.clock())
            session.add(run)
            session.flush()
            assert run.id is not None
            summary = RunSummary(source.connection, kind, run.id)
        try:
            with self.sessions.begin() as session:
                self._check_parked(session, source.connection)
                lease.acquire(session, source.connection, self.owner, self.clock())
        except (lease.LeaseHeldError, _ParkedError) as exc:
            summary.status, summary.error = ("parked" if isinstance(exc, _ParkedError) else "skipped"), str(exc)
            self._finish(summary, release=False)
            return summary
        try:
            body(summary)
            summary.status = "ok"
        except SyncInterruptedError:
            summary.status = "interrupted"
            summary.error = "stopped on request; resumes from the last committed page"
        except RateLimitedError as exc:
            until = self.clock() + timedelta(seconds=exc.retry_after or 60.0)
            self._park(source.connection, until)
            summary.status = "parked"
            summary.error = f"rate limited until {until:%Y-%m-%d %H:%M} UTC, resumes then: {exc}"
        except ConnectorError as exc:
            summary.status = "failed"
            summary.error = f"{type(exc).__name__} ({exc.actor}): {exc}"
        except Exception as exc:
            summary.status = "failed"
            summary.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            summary.api_calls = source.api_calls() - calls_before
            self._finish(summary, release=True)
        return summary

    def _check_parked(self, session: Session, connection: str) -> None:
        row = session.get(Connection, connection)
        now = self.clock()
        if row is not None and row.parked_until is not None and row.parked_until > now:
            raise _ParkedError(
                f"{connection}: parked by the vendor's rate limit until {row.parked_until:%Y-%m-%d %H:%M} UTC"
            )

    def _park(self, connection: str, until: datetime) -> None:
        with self.sessions.begin() as session:
            row = session.get(Connection, connection)
            if row is not None:
                row.parked_until = until

    def _finish(self, summary: RunSummary, *, release: bool) -> None:
        total = summary.total()
        with self.sessions.begin() as session:
            if release:
                lease.release(session, summary.connection, self.owner)
                if self.after_run is not None:
                    self.after_run(session)
            session.execute(
                sa.update(SyncRun)
                .where(col(SyncRun.id) == summary.run_id)
                .values(
                    kind=summary.kind,
                    status=summary.status,
                    finished_at=self.clock(),
                    api_calls=summary.api_calls,
                    rows_written=total.written,
                    rows_unchanged=total.unchanged,
                    rows_quarantined=total.quarantined,
                    rows_deleted=total.deleted,
                    error=summary.error,
                )
            )

    # --- the work --------------------------------------------------------------

    def _sync(self, summary: RunSummary, source: RecordSource, full: bool, entities: Sequence[Entity] | None) -> None:
        wanted = list(entities or source.entities)
        signpost = self.clock()
        # the feed's horizon, less an hour so `cursor - overlap` never falls just outside it
        horizon = signpost - timedelta(days=source.change_horizon_days) + timedelta(hours=1)
        with self.sessions() as session:
            cursors = {
                Entity(c.entity): c.synced_through
                for c in session.execute(
                    sa.select(SyncCursor).where(col(SyncCursor.connection_id) == source.connection)
                ).scalars()
            }
            unfinished = {
                (Entity(p.entity), p.kind): p
                for p in session.execute(
                    sa.select(PullProgress).where(col(PullProgress.connection_id) == source.connection)
                ).scalars()
            }
        incremental: list[Entity] = []
        for entity in wanted:
            cursor = cursors.get(entity)
            if (entity, CATCHUP) in unfinished:
                progress = unfinished[(entity, CATCHUP)]
                self._pull(summary, source, entity, CATCHUP, Window(progress.window_start, progress.window_end))
            elif full or cursor is None or cursor - self.policy.overlap < horizon or (entity, FULL) in unfinished:
                summary.kind = "full"
                self._pull(summary, source, entity, FULL, Window())
            else:
                incremental.append(entity)
        if incremental:
            self._changes(summary, source, incremental, cursors, signpost)

    def _changes(
        self,
        summary: RunSummary,
        source: RecordSource,
        entities: list[Entity],
        cursors: dict[Entity, datetime | None],
        signpost: datetime,
    ) -> None:
        starts = [c for e in entities if (c := cursors.get(e)) is not None]
        since = min(starts) - self.policy.overlap
        for page in source.changes(entities, since):
            if page.truncated:
                # The feed capped this entity: re-read the window by query instead.
                self._pull(summary, source, page.entity, CATCHUP, Window(since, signpost), started_at=signpost)
                continue
            with self.sessions.begin() as session:
                counts = self._apply(session, source.connection, page)
                if page.final:
                    self._advance(session, source.connection, page.entity, signpost)
            self._observe(summary, page.entity, counts)
            if self.stop.is_set() and not page.final:
                raise SyncInterruptedError()

    def _pull(
        self,
        summary: RunSummary,
        source: RecordSource,
        entity: Entity,
        kind: str,
        window: Window,
        *,
        started_at: datetime | None = None,
    ) -> None:
        key = (source.connection, entity.value, kind)
        with self.sessions.begin() as session:
            progress = session.get(PullProgress, key)
            if progress is None:
                progress = PullProgress(
                    connection_id=source.connection,
                    entity=entity.value,
                    kind=kind,
                    started_at=started_at or self.clock(),
                    window_start=window.start,
                    window_end=window.end,
                )
                session.add(progress)
            elif (progress.window_start, progress.window_end) != (window.start, window.end):
                # a different window than the unfinished one: positions do not carry over
                progress.window_start, progress.window_end = window.start, window.end
                progress.resume, progress.rows = None, 0
                progress.started_at = started_at or self.clock()
            resume = progress.resume
            started = progress.started_at
            assert started is not None
        for number, page in enumerate(source.pull(entity, window, resume), 1):
            with self.sessions.begin() as session:
                counts = self._apply(session, source.connection, page)
                if number & (number - 1) == 0:  # pages 1, 2, 4, 8, ...: statistics keep up with the table
                    refresh_statistics(session, entity)
                session.execute(
                    sa.update(PullProgress)
                    .where(
                        col(PullProgress.connection_id) == source.connection,
                        col(PullProgress.entity) == entity.value,
                        col(PullProgress.kind) == kind,
                    )
                    .values(resume=page.resume, rows=col(PullProgress.rows) + len(page.records))
                )
            self._observe(summary, entity, counts)
            if self.stop.is_set() and page.resume is not None:
                raise SyncInterruptedError()
        if kind != BACKFILL:
            self._reconcile_deletes(summary, source, entity)
        with self.sessions.begin() as session:
            if kind != BACKFILL:
                self._advance(session, source.connection, entity, started)
            session.execute(
                sa.delete(PullProgress).where(
                    col(PullProgress.connection_id) == source.connection,
                    col(PullProgress.entity) == entity.value,
                    col(PullProgress.kind) == kind,
                )
            )

    def _reconcile_deletes(self, summary: RunSummary, source: RecordSource, entity: Entity) -> None:
        """Mark deleted what the ledger holds and the source no longer has.

        Skipped on an entity's first pull: nothing can be missing yet.
        """
        with self.sessions() as session:
            if session.get(SyncCursor, (source.connection, entity.value)) is None:
                return
        at_source: set[str] = set()
        for chunk in source.external_ids(entity):
            at_source.update(chunk)
        with self.sessions.begin() as session:
            live, gone = missing_at_source(session, source.connection, entity, at_source)
            limit = self.policy.delete_guard_ratio * live
            if live >= self.policy.delete_guard_minimum and len(gone) > limit:
                raise DeleteGuardError(
                    f"{source.connection}: the source lists {len(at_source)} {entity.value} records "
                    f"but the ledger holds {live}; marking {len(gone)} deleted exceeds the "
                    f"guard ({self.policy.delete_guard_ratio:.0%}). Check the connection points at "
                    "the right company; raise delete_guard_ratio to accept."
                )
            deleted = mark_deleted(session, source.connection, entity, sorted(gone), self.clock())
        counts = ApplyCounts(deleted=deleted)
        self._observe(summary, entity, counts)

    # --- helpers ---------------------------------------------------------------

    def _apply(self, session: Session, connection: str, page: Page) -> ApplyCounts:
        now = self.clock()
        lease.renew(session, connection, self.owner, now)
        counts = apply_page(session, page.entity, page.records, page.quarantined, now)
        resolve_quarantine(session, connection, page.entity, counts.written_ids, now)
        return counts

    def _advance(self, session: Session, connection: str, entity: Entity, to: datetime) -> None:
        cursor = session.get(SyncCursor, (connection, entity.value))
        if cursor is None:
            session.add(SyncCursor(connection_id=connection, entity=entity.value, synced_through=to))
        elif cursor.synced_through is None or cursor.synced_through < to:
            cursor.synced_through = to

    def _observe(self, summary: RunSummary, entity: Entity, counts: ApplyCounts) -> None:
        summary.counts.setdefault(entity, ApplyCounts()).add(counts)
        if self.on_page is not None:
            self.on_page(entity, counts)
