"""A worker process for the journal crash tests: journals N effects, then carries them out.

``python -m tests.e2e.journal_worker DB_URL SERVICE_URL N``. The effect is a
POST to the test's effect service with the entry's key as ``Idempotency-Key``;
an entry whose outcome is unknown is first looked up there by key.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy.orm import sessionmaker

from sync import journal
from sync.db import make_engine
from sync.journal import Claimed, Done, Intent, Outcome


def main(db_url: str, service: str, count: int) -> None:
    engine = make_engine(db_url)
    sessions = sessionmaker(engine, expire_on_commit=False)

    def now() -> datetime:
        return datetime.now(UTC)

    with sessions.begin() as session:
        for n in range(count):
            journal.record(session, Intent(f"effect:acme:{n}", "acme", "effect", {"n": n}), now())

    def carry_out(entry: Claimed) -> Outcome:
        if entry.outcome_unknown:
            found = requests.get(f"{service}/effects/{entry.key}", timeout=10)
            if found.status_code == 200:
                return Done(found.json()["id"])
        made = requests.post(f"{service}/effects", headers={"Idempotency-Key": entry.key}, timeout=10)
        made.raise_for_status()
        return Done(made.json()["id"])

    while journal.run_due(sessions, "effect", "worker", carry_out, now, lease=timedelta(0)):
        pass
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
