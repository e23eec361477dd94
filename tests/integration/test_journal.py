"""The journal of external effects, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from sync import journal
from sync.db import make_engine, upgrade
from sync.journal import Claimed, Done, GiveUp, Intent, RetryAt
from sync.models import JournalEntry, Tenant

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as session:
        session.add(Tenant(id="acme", display_name="Acme"))
    return factory


def intent(key: str, amount: str = "10.00") -> Intent:
    return Intent(key, "acme", "charge", {"invoice": key, "amount": Decimal(amount)}, subject=f"invoice:{key}")


def test_recording_the_same_key_twice_makes_one_entry(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        assert journal.record(s, intent("charge:acme:1:1"), T0) is True
    with sessions.begin() as s:
        assert journal.record(s, intent("charge:acme:1:1", "99.00"), T0) is False
    with sessions() as s:
        rows = journal.entries(s)
    assert len(rows) == 1 and '"amount":10.00' in rows[0].payload


def test_claim_then_done_is_never_claimed_again(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        journal.record(s, intent("k1"), T0)
        journal.record(s, intent("k2"), T0)
    claimed = journal.claim(sessions, "charge", "w1", T0)
    assert [c.key for c in claimed] == ["k1", "k2"] and not any(c.outcome_unknown for c in claimed)
    assert claimed[0].payload["amount"] == Decimal("10.00")
    assert journal.claim(sessions, "charge", "w2", T0) == []
    with sessions.begin() as s:
        assert journal.settle(s, "k1", "w1", Done("pi_1", {"status": "succeeded"}), T0)
    with sessions() as s:
        row = s.execute(sa.select(JournalEntry).where(JournalEntry.key == "k1")).scalar_one()
    assert (row.status, row.external_id, row.attempts) == ("done", "pi_1", 1)
    assert journal.claim(sessions, "charge", "w2", T0 + timedelta(hours=1))[0].key == "k2"  # lease expired


def test_retry_later_and_give_up(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        journal.record(s, intent("k1"), T0)
        journal.record(s, intent("k2"), T0)
    for entry in journal.claim(sessions, "charge", "w1", T0):
        outcome = RetryAt(T0 + timedelta(days=3), "insufficient_funds") if entry.key == "k1" else GiveUp("stolen_card")
        with sessions.begin() as s:
            journal.settle(s, entry.key, "w1", outcome, T0)
    assert journal.claim(sessions, "charge", "w1", T0 + timedelta(days=2)) == []
    again = journal.claim(sessions, "charge", "w1", T0 + timedelta(days=3))
    assert [(c.key, c.attempt) for c in again] == [("k1", 2)]
    with sessions() as s:
        failed = s.execute(sa.select(JournalEntry).where(JournalEntry.key == "k2")).scalar_one()
    assert (failed.status, failed.error) == ("failed", "stolen_card")


def test_an_expired_lease_hands_the_entry_out_with_its_outcome_unknown(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        journal.record(s, intent("k1"), T0)
    journal.claim(sessions, "charge", "dead-worker", T0)
    assert journal.claim(sessions, "charge", "w2", T0 + timedelta(minutes=1)) == []
    late = journal.claim(sessions, "charge", "w2", T0 + journal.LEASE)
    assert [(c.key, c.outcome_unknown, c.attempt) for c in late] == [("k1", True, 2)]
    with sessions.begin() as s:  # the dead worker's late answer is refused
        assert journal.settle(s, "k1", "dead-worker", Done("pi_x"), T0 + journal.LEASE) is False
        assert journal.settle(s, "k1", "w2", Done("pi_1"), T0 + journal.LEASE) is True


def test_run_due_leaves_a_crashed_handler_in_flight(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        journal.record(s, intent("k1"), T0)

    def boom(entry: Claimed) -> Done:
        raise ConnectionError("timed out after sending")

    assert journal.run_due(sessions, "charge", "w1", boom, lambda: T0) == []
    with sessions() as s:
        row = s.execute(sa.select(JournalEntry)).scalar_one()
    assert row.status == "in_flight" and row.error is not None and "timed out after sending" in row.error
    seen: list[Claimed] = []
    journal.run_due(sessions, "charge", "w2", lambda e: seen.append(e) or Done("pi_1"), lambda: T0 + journal.LEASE)
    assert [e.outcome_unknown for e in seen] == [True]


def test_concurrent_workers_never_claim_the_same_entry(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        for n in range(200):
            journal.record(s, intent(f"k{n}"), T0)
    taken: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        try:
            while True:
                batch = journal.claim(sessions, "charge", name, T0, limit=7)
                if not batch:
                    return
                with lock:
                    taken.setdefault(name, []).extend(c.key for c in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = [k for ks in taken.values() for k in ks]
    assert len(keys) == len(set(keys)) == 200


def test_a_follow_up_is_journaled_with_the_outcome(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        journal.record(s, intent("charge:acme:7:1"), T0)
    later = T0 + timedelta(days=3)
    retry = Intent("charge:acme:7:2", "acme", "charge", {"amount": Decimal("10.00")}, "invoice:7", not_before=later)
    journal.run_due(sessions, "charge", "w1", lambda e: GiveUp("insufficient_funds", follow_up=retry), lambda: T0)
    with sessions() as s:
        rows = {r.key: r.status for r in journal.entries(s)}
    assert rows == {"charge:acme:7:1": "failed", "charge:acme:7:2": "pending"}
    assert journal.claim(sessions, "charge", "w1", later - timedelta(seconds=1)) == []
    assert [c.key for c in journal.claim(sessions, "charge", "w1", later)] == ["charge:acme:7:2"]


def test_a_tenant_scoped_worker_claims_only_its_tenants_entries(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.add(Tenant(id="other", display_name="Other"))
        s.flush()
        journal.record(s, intent("k-acme"), T0)
        journal.record(s, Intent("k-other", "other", "charge", {"amount": "1.00"}), T0)
    claimed = journal.claim(sessions, "charge", "w", T0, tenant="acme")
    assert [c.key for c in claimed] == ["k-acme"]
    assert [c.key for c in journal.claim(sessions, "charge", "w", T0)] == ["k-other"]


def test_recording_many_skips_keys_already_there(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        journal.record(s, intent("k1"), T0)
    with sessions.begin() as s:
        keys = journal.record_many(s, [intent("k1", "99.00"), intent("k2"), intent("k3"), intent("k2")], T0, chunk=2)
    assert keys == ["k2", "k3"]
    with sessions() as s:
        rows = {
            e.key: (e.status, e.next_attempt_at, journal.jsonwire.loads(e.payload)["amount"])
            for e in journal.entries(s)
        }
    assert rows == {
        "k1": ("pending", T0, Decimal("10.00")),
        "k2": ("pending", T0, Decimal("10.00")),
        "k3": ("pending", T0, Decimal("10.00")),
    }


def test_settling_many_settles_only_what_the_worker_still_holds(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        for key in ("a", "b", "c"):
            journal.record(s, intent(key), T0)
    journal.claim(sessions, "charge", "w1", T0, lease=timedelta(minutes=1))
    [taken] = journal.claim(sessions, "charge", "w2", T0 + timedelta(minutes=2), limit=1)  # w1's lease ran out
    assert taken.key == "a"
    outcomes = [
        ("a", journal.Done("x-a")),
        ("b", journal.RetryAt(T0 + timedelta(hours=1), "throttled")),
        ("c", journal.GiveUp("parked: closed period")),
    ]
    with sessions.begin() as s:
        settled = journal.settle_many(s, outcomes, "w1", T0 + timedelta(minutes=3))
    assert [key for key, _ in settled] == ["b", "c"]
    with sessions() as s:
        rows = {e.key: (e.status, e.lease_owner, e.error) for e in journal.entries(s)}
    assert rows == {
        "a": ("in_flight", "w2", None),
        "b": ("pending", None, "throttled"),
        "c": ("failed", None, "parked: closed period"),
    }
