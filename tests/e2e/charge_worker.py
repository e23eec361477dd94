"""A charge worker for the crash tests: carries out journaled charges through Stripe.

``python -m tests.e2e.charge_worker DB_URL STRIPE_URL``
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import sessionmaker

from collect.charging import KIND, ChargeExecutor
from connectors.stripe import StripeProcessor
from connectors.stripe.sandbox import API_KEY
from sync import journal
from sync.db import make_engine


def main(db_url: str, stripe_url: str) -> None:
    engine = make_engine(db_url)
    sessions = sessionmaker(engine, expire_on_commit=False)

    def now() -> datetime:
        return datetime.now(UTC)

    executor = ChargeExecutor(sessions, StripeProcessor(API_KEY, base_url=stripe_url, timeout=10.0), now)
    while journal.run_due(sessions, KIND, "charge-worker", executor, now, lease=timedelta(0)):
        pass
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
