"""A write-back worker for the crash tests: posts the journal's due postings to the configured ledger.

``python -m tests.e2e.writeback_worker DB_URL CONFIG``: the app built from ``CONFIG`` (its ledger
connection pointed wherever the test wants, a proxy) on the database at ``DB_URL``, then
``App.reconciler().run()`` again and again until a run settles nothing.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from arsync.bootstrap import build
from arsync.config import DatabaseConfig, load_config

RUNS = 20
"""A bound, so a worker that keeps settling something (a bug) ends rather than spins."""


def main(db_url: str, config: str) -> None:
    loaded = load_config(Path(config))
    app = build(replace(loaded, database=DatabaseConfig(url=db_url)))
    try:
        reconciler = app.reconciler()
        for _ in range(RUNS):
            if not reconciler.run().outcomes:
                return
        raise SystemExit(f"still settling postings after {RUNS} runs")
    finally:
        app.engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
