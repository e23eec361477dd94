"""One tenant's write-back, wired: derive postings, post them per ledger, recognise echoes, report."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from arsync.config import TenantConfig
from collect.standing import CREDIT_KIND
from connectors.base import Clock, LedgerWriter
from reconcile.accounts import account_problems
from reconcile.echoes import recognise_echoes
from reconcile.poster import PostingExecutor
from reconcile.postings import KIND, Accounts, AllocationOrder, Derived, derive_postings
from reconcile.report import Report, build_report
from sync import journal
from sync.models import JournalEntry

BATCH = 300
"""Journal entries claimed at once: ten QuickBooks batches, six Xero ones."""


@dataclass
class ReconcileRun:
    echoes: int
    derived: Derived
    outcomes: list[tuple[str, journal.Outcome]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for _, outcome in self.outcomes:
            label = {journal.Done: "posted", journal.RetryAt: "retry later", journal.GiveUp: "parked"}[type(outcome)]
            found[label] = found.get(label, 0) + 1
        return found


class Reconciler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenant: TenantConfig,
        writers: Mapping[str, LedgerWriter],
        clock: Clock,
        owner: str,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sessions = sessions
        self.tenant = tenant
        self.writers = writers
        self.clock = clock
        self.owner = owner
        self.stop = stop

    def ledgers(self) -> dict[str, Accounts]:
        return {
            c.name: Accounts(
                c.writeback.clearing_account,
                c.writeback.bank_account,
                c.writeback.fee_account,
                c.writeback.surcharge_account,
                c.writeback.refund_account,
                c.writeback.refund_item,
                AllocationOrder(
                    c.writeback.allocation_order,
                    # The item late fees are booked on makes an invoice of only such lines a late-fee invoice.
                    frozenset(c.writeback.late_fee_items)
                    | ({c.writeback.late_fee_item} if c.writeback.late_fee_item else set()),
                    frozenset(c.writeback.collection_fee_items),
                ),
                late_fee_item=c.writeback.late_fee_item,
                late_fee_account=c.writeback.late_fee_account,
                collections_fee_account=c.writeback.collections_fee_account,
                collections_vendor=c.writeback.collections_vendor,
            )
            for c in self.tenant.connections
            if c.writeback is not None
        }

    def today(self) -> date:
        return self.clock().astimezone(self.tenant.tzinfo).date()

    def account_problems(self) -> list[str]:
        """Each ledger's write-back accounts against its chart of accounts (one read per ledger)."""
        problems = []
        for connection, accounts in self.ledgers().items():
            problems += account_problems(connection, accounts, self.writers[connection].accounts())
        return problems

    def run(self) -> ReconcileRun:
        """Recognise echoes, journal what the processor's tables call for, then post everything due."""
        with self.sessions.begin() as session:
            echoes = recognise_echoes(session, self.tenant.name)
            derived = derive_postings(
                session,
                self.tenant.name,
                self.ledgers(),
                self.tenant.timezone,
                self.clock(),
                self.tenant.home_currency,
            )
        result = ReconcileRun(echoes, derived)
        clearing = {connection: accounts.clearing for connection, accounts in self.ledgers().items()}
        executor = PostingExecutor(
            self.sessions, self.writers, self.clock, self.today, clearing, self.ledgers(), self.tenant.home_currency
        )
        for kind in (KIND, CREDIT_KIND):
            while not self.stop():
                settled = journal.run_due_batch(
                    self.sessions, kind, self.owner, executor, self.clock, limit=BATCH, tenant=self.tenant.name
                )
                result.outcomes.extend(settled)
                if len(settled) < BATCH:
                    break
        return result

    def release(self, keys: list[str] | None) -> int:
        """Parked postings a person has dealt with (a period reopened, an invoice restored) go back in the queue."""
        with self.sessions.begin() as session:
            query = sa.update(JournalEntry).where(
                col(JournalEntry.tenant_id) == self.tenant.name,
                col(JournalEntry.kind).in_((KIND, CREDIT_KIND)),
                col(JournalEntry.status) == "failed",
            )
            if keys is not None:
                query = query.where(col(JournalEntry.key).in_(keys))
            released = session.execute(query.values(status="pending", next_attempt_at=self.clock()))
            return int(getattr(released, "rowcount", 0))

    def report(self, since: date | None = None) -> Report:
        with self.sessions() as session:
            return build_report(session, self.tenant.name, since, self.tenant.home_currency)
