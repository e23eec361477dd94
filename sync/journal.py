"""The journal: every external effect, exactly once.

The life of an effect (a charge, a posting, a fee, a deposit, an email):

1. ``record`` writes it with a deterministic key, in the same transaction as
   the decision to act. Recording the same key again is a no-op, so a re-run
   of the decision never makes a second effect.
2. ``claim`` leases due entries to one worker (``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL; SQLite has one writer at a time) and marks them ``in_flight``
   *before* the call is made. The claim is committed on its own.
3. The worker makes the call with the vendor's idempotency mechanism, keyed by
   the entry's key, then ``complete`` or ``retry_later`` or ``give_up``.

A worker that dies after step 2 leaves an ``in_flight`` entry. When its lease
expires, the next claim hands it out with ``outcome_unknown`` set: the handler
must look the effect up at the vendor (by our key) before acting again. So a
crash at any line neither doubles an effect nor loses one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from connectors import jsonwire
from sync.models import JournalEntry

LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Intent:
    """An effect decided on: what to do, under which key."""

    key: str
    tenant: str
    kind: str
    payload: Mapping[str, Any]
    subject: str | None = None
    not_before: datetime | None = None
    """When the effect is due (now, if not given)."""


@dataclass(frozen=True)
class Claimed:
    key: str
    kind: str
    tenant: str
    subject: str | None
    payload: Mapping[str, Any]
    attempt: int
    outcome_unknown: bool
    """A previous worker may have made the call: look it up before acting."""


@dataclass(frozen=True)
class Done:
    external_id: str | None = None
    result: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RetryAt:
    when: datetime
    error: str


@dataclass(frozen=True)
class GiveUp:
    error: str
    follow_up: Intent | None = None
    """A new effect decided by this outcome (the next attempt of a declined charge), journaled atomically."""


Outcome = Done | RetryAt | GiveUp
Handler = Callable[[Claimed], Outcome]
BatchHandler = Callable[[list[Claimed]], Mapping[str, Outcome]]
"""Handles claimed entries together (one bulk call to a vendor); returns an outcome per key it settled."""


def record(session: Session, intent: Intent, now: datetime) -> bool:
    """Journal an intent in the caller's transaction. False if the key was already there."""
    return bool(record_many(session, [intent], now))


def record_many(session: Session, intents: Iterable[Intent], now: datetime, *, chunk: int = 1000) -> list[str]:
    """Journal many intents in the caller's transaction: per chunk, one lookup of the keys and one bulk insert.

    Same rule as :func:`record`: a key already journaled is left as it is. Returns the keys recorded.
    """
    recorded: list[str] = []
    batch: list[Intent] = []

    def flush() -> None:
        keys = [intent.key for intent in batch]
        present = set(
            session.execute(sa.select(col(JournalEntry.key)).where(col(JournalEntry.key).in_(keys))).scalars()
        )
        rows = []
        for intent in batch:
            if intent.key in present:
                continue
            present.add(intent.key)
            rows.append(
                {
                    "key": intent.key,
                    "tenant_id": intent.tenant,
                    "kind": intent.kind,
                    "subject": intent.subject,
                    "payload": jsonwire.dumps(dict(intent.payload)),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": intent.not_before or now,
                    "lease_owner": None,
                    "lease_until": None,
                    "external_id": None,
                    "result": None,
                    "error": None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            recorded.append(intent.key)
        if rows:
            session.execute(sa.insert(JournalEntry).execution_options(render_nulls=True), rows)
        batch.clear()

    for intent in intents:
        batch.append(intent)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return recorded


def claim(
    sessions: sessionmaker[Session],
    kind: str,
    owner: str,
    now: datetime,
    *,
    limit: int = 50,
    lease: timedelta = LEASE,
    tenant: str | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` due entries of ``kind`` (of one ``tenant`` when given) to ``owner``, in flight."""
    due = sa.or_(
        sa.and_(col(JournalEntry.status) == "pending", col(JournalEntry.next_attempt_at) <= now),
        sa.and_(col(JournalEntry.status) == "in_flight", col(JournalEntry.lease_until) <= now),
    )
    with sessions.begin() as session:
        query = (
            sa.select(JournalEntry)
            .where(col(JournalEntry.kind) == kind, due)
            .order_by(col(JournalEntry.id))
            .limit(limit)
        )
        if tenant is not None:
            query = query.where(col(JournalEntry.tenant_id) == tenant)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        claimed = []
        for entry in session.execute(query).scalars():
            unknown = entry.status == "in_flight"
            entry.status = "in_flight"
            entry.attempts += 1
            entry.lease_owner = owner
            entry.lease_until = now + lease
            entry.updated_at = now
            claimed.append(
                Claimed(
                    key=entry.key,
                    kind=entry.kind,
                    tenant=entry.tenant_id,
                    subject=entry.subject,
                    payload=jsonwire.loads(entry.payload),
                    attempt=entry.attempts,
                    outcome_unknown=unknown,
                )
            )
    return claimed


def settle(session: Session, key: str, owner: str, outcome: Outcome, now: datetime) -> bool:
    """Record what happened. False (and nothing written) if ``owner`` no longer holds the lease."""
    values: dict[str, Any] = {"updated_at": now, "lease_owner": None, "lease_until": None}
    match outcome:
        case Done(external_id, result):
            values |= {"status": "done", "external_id": external_id, "error": None}
            if result is not None:
                values["result"] = json.dumps(dict(result), default=str, sort_keys=True)
        case RetryAt(when, error):
            values |= {"status": "pending", "next_attempt_at": when, "error": error}
        case GiveUp(error, follow_up):
            values |= {"status": "failed", "error": error}
            if follow_up is not None:
                record(session, follow_up, now)
    updated = session.execute(
        sa.update(JournalEntry)
        .where(
            col(JournalEntry.key) == key,
            col(JournalEntry.lease_owner) == owner,
            col(JournalEntry.status) == "in_flight",
        )
        .values(values)
    )
    return bool(getattr(updated, "rowcount", 0))


def settle_many(
    session: Session, outcomes: list[tuple[str, Outcome]], owner: str, now: datetime
) -> list[tuple[str, Outcome]]:
    """:func:`settle` for many entries at once: one UPDATE per kind of outcome, executed for all its rows.

    Only entries ``owner`` still holds are settled (read under a row lock on PostgreSQL); the others are
    left to whoever holds them. An outcome with a follow-up is settled alone (it records a new entry).
    """
    if not outcomes:
        return []
    query = sa.select(col(JournalEntry.key)).where(
        col(JournalEntry.key).in_([key for key, _ in outcomes]),
        col(JournalEntry.lease_owner) == owner,
        col(JournalEntry.status) == "in_flight",
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    held = set(session.execute(query).scalars())
    table: sa.Table = JournalEntry.__table__  # type: ignore[attr-defined]
    mine = sa.and_(table.c.key == sa.bindparam("k"), table.c.lease_owner == owner, table.c.status == "in_flight")
    released = {"updated_at": now, "lease_owner": None, "lease_until": None}
    done: list[dict[str, Any]] = []
    later: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    settled = []
    for key, outcome in outcomes:
        if key not in held:
            continue
        settled.append((key, outcome))
        match outcome:
            case Done(external_id, result):
                text = json.dumps(dict(result), default=str, sort_keys=True) if result is not None else None
                done.append({"k": key, "x": external_id, "r": text})
            case RetryAt(when, error):
                later.append({"k": key, "w": when, "e": error})
            case GiveUp(error, None):
                failed.append({"k": key, "e": error})
            case GiveUp():
                settle(session, key, owner, outcome, now)
    statements: tuple[tuple[list[dict[str, Any]], dict[str, Any]], ...] = (
        (done, {"status": "done", "external_id": sa.bindparam("x"), "result": sa.bindparam("r"), "error": None}),
        (later, {"status": "pending", "next_attempt_at": sa.bindparam("w"), "error": sa.bindparam("e")}),
        (failed, {"status": "failed", "error": sa.bindparam("e")}),
    )
    for rows, values in statements:
        if rows:
            session.execute(sa.update(table).where(mine).values({**released, **values}), rows)
    return settled


def run_due(
    sessions: sessionmaker[Session],
    kind: str,
    owner: str,
    handler: Handler,
    clock: Callable[[], datetime],
    *,
    limit: int = 50,
    lease: timedelta = LEASE,
    tenant: str | None = None,
) -> list[tuple[str, Outcome]]:
    """Claim due entries of ``kind`` and settle each with the handler's outcome.

    An exception from the handler (a timeout after sending, say) leaves the
    entry in flight with the error noted: its outcome is unknown until the
    lease expires and a later claim looks it up. The other entries go on.
    A handler that acts with one tenant's credentials (a payment processor)
    must pass ``tenant``, so it never claims another tenant's entries.
    """
    settled = []
    for entry in claim(sessions, kind, owner, clock(), limit=limit, lease=lease, tenant=tenant):
        try:
            outcome = handler(entry)
        except Exception as exc:
            _note_unknown(sessions, [entry.key], owner, f"outcome unknown: {type(exc).__name__}: {exc}", clock())
            continue
        with sessions.begin() as session:
            if settle(session, entry.key, owner, outcome, clock()):
                settled.append((entry.key, outcome))
    return settled


def run_due_batch(
    sessions: sessionmaker[Session],
    kind: str,
    owner: str,
    handler: BatchHandler,
    clock: Callable[[], datetime],
    *,
    limit: int = 300,
    lease: timedelta = LEASE,
    tenant: str | None = None,
) -> list[tuple[str, Outcome]]:
    """Claim due entries of ``kind`` and settle them with one call of ``handler`` (bulk postings).

    As with :func:`run_due`, a handler that raises leaves every claimed entry in
    flight with its outcome unknown; an entry the handler returns no outcome for
    stays in flight too, and is looked up when its lease expires.
    """
    claimed = claim(sessions, kind, owner, clock(), limit=limit, lease=lease, tenant=tenant)
    if not claimed:
        return []
    keys = [entry.key for entry in claimed]
    try:
        outcomes = handler(claimed)
    except Exception as exc:
        _note_unknown(sessions, keys, owner, f"outcome unknown: {type(exc).__name__}: {exc}", clock())
        return []
    with sessions.begin() as session:
        settled = settle_many(session, [(k, outcomes[k]) for k in keys if k in outcomes], owner, clock())
    missing = [key for key in keys if key not in outcomes]
    if missing:
        _note_unknown(sessions, missing, owner, "outcome unknown: the handler returned none", clock())
    return settled


def _note_unknown(sessions: sessionmaker[Session], keys: list[str], owner: str, error: str, now: datetime) -> None:
    with sessions.begin() as session:
        session.execute(
            sa.update(JournalEntry)
            .where(col(JournalEntry.key).in_(keys), col(JournalEntry.lease_owner) == owner)
            .values(error=error, updated_at=now)
        )


def entries(session: Session, keys: Iterable[str] | None = None) -> list[JournalEntry]:
    query = sa.select(JournalEntry).order_by(col(JournalEntry.id))
    if keys is not None:
        query = query.where(col(JournalEntry.key).in_(list(keys)))
    return list(session.execute(query).scalars())
