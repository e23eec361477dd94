"""One tenant's collecting, wired: plans and charges, enrolment, the event feed, refunds.

The CLI and the daemon call this; it holds no state of its own beyond what
:class:`arsync.bootstrap.App` built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_DOWN, Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from arsync.config import PaymentsConfig, TenantConfig
from collect import charging, refunds
from collect.autopay import ChargePlan, Selection, journal_plan, plan_charges
from collect.charging import ChargeExecutor
from collect.enrolment import EnrolmentError, complete_pending_links, customer_view
from collect.links import LinkError, LinkSettings, payment_link, setup_link
from collect.marks import LedgerRefError, resolve_customer, resolve_invoice
from collect.processor_events import EventFollower, FollowReport
from connectors.base import Clock, HostedLink, PaymentProcessor
from sync import journal
from sync.models import ChargeInstalment, Invoice

WORKER_BATCH = 50


class CollectingError(Exception):
    """A request that cannot be carried out as asked (unknown invoice, no processor configured)."""


@dataclass
class RunResult:
    plan: ChargePlan
    recorded: int
    outcomes: list[tuple[str, journal.Outcome]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for _, outcome in self.outcomes:
            label = type(outcome).__name__.lower()
            if isinstance(outcome, journal.Done) and outcome.result:
                label = str(outcome.result.get("state", label))
            elif isinstance(outcome, journal.GiveUp):
                label = outcome.error.split(":", 1)[0]
            found[label] = found.get(label, 0) + 1
        return found


class Collector:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenant: TenantConfig,
        payments: PaymentsConfig,
        processor: PaymentProcessor,
        clock: Clock,
        owner: str,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sessions = sessions
        self.tenant = tenant
        self.payments = payments
        self.processor = processor
        self.clock = clock
        self.owner = owner
        self.stop = stop
        self.connections = [c.name for c in tenant.connections]
        self.links = LinkSettings(payments.success_url, payments.cancel_url)

    def today(self) -> date:
        """The tenant's calendar day now (charge days are counted in its time zone)."""
        return self.clock().astimezone(self.tenant.tzinfo).date()

    # --- charges --------------------------------------------------------------------------

    def plan(self, day: date | None = None, selection: Selection | None = None) -> ChargePlan:
        with self.sessions() as session:
            return plan_charges(
                session,
                self.tenant.name,
                self.connections,
                self.payments.autopay,
                day or self.today(),
                selection=selection,
            )

    def run(self, day: date | None = None, selection: Selection | None = None) -> RunResult:
        """Plan, journal the plan (one transaction), then carry out every charge that is due."""
        with self.sessions.begin() as session:
            plan = plan_charges(
                session,
                self.tenant.name,
                self.connections,
                self.payments.autopay,
                day or self.today(),
                selection=selection,
            )
            recorded = journal_plan(session, plan, self.clock())
        return RunResult(plan, recorded, self.work())

    def executor(self) -> ChargeExecutor:
        return ChargeExecutor(
            self.sessions, self.processor, self.clock, self.payments.autopay.retry_days, links=self.links
        )

    def work(self) -> list[tuple[str, journal.Outcome]]:
        """Carry out this tenant's due charges and refunds with its processor, until none is left."""
        done: list[tuple[str, journal.Outcome]] = []
        for kind, handler in (
            (charging.KIND, self.executor()),
            (refunds.KIND, refunds.RefundExecutor(self.sessions, self.processor, self.clock)),
        ):
            while True:
                settled = journal.run_due(
                    self.sessions, kind, self.owner, handler, self.clock, limit=WORKER_BATCH, tenant=self.tenant.name
                )
                done.extend(settled)
                if len(settled) < WORKER_BATCH or self.stop():
                    break
        return done

    def invoice_ref(self, text: str) -> tuple[str, str]:
        with self.sessions() as session:
            try:
                return resolve_invoice(session, self.connections, text)
            except LedgerRefError as exc:
                raise CollectingError(str(exc)) from None

    def customer_ref(self, text: str) -> tuple[str, str]:
        with self.sessions() as session:
            try:
                return resolve_customer(session, self.connections, text)
            except LedgerRefError as exc:
                raise CollectingError(str(exc)) from None

    def instalments(self, invoice: tuple[str, str], count: int, every_days: int, first: date) -> list[ChargeInstalment]:
        """Split the invoice's balance into ``count`` instalments (the last takes the rounding remainder)."""
        if count < 2:
            raise CollectingError("an instalment plan needs at least 2 instalments")
        if every_days < 1:
            raise CollectingError("--every-days must be at least 1")
        with self.sessions.begin() as session:
            row = session.execute(
                sa.select(Invoice).where(
                    col(Invoice.connection_id) == invoice[0], col(Invoice.external_id) == invoice[1]
                )
            ).scalar_one()
            if row.balance <= 0:
                raise CollectingError(f"invoice {invoice[1]} owes nothing")
            existing = session.execute(
                sa.select(sa.func.count())
                .select_from(ChargeInstalment)
                .where(
                    col(ChargeInstalment.connection_id) == invoice[0],
                    col(ChargeInstalment.invoice_external_id) == invoice[1],
                )
            ).scalar_one()
            if existing:
                raise CollectingError(f"invoice {invoice[1]} already has an instalment plan")
            cents = Decimal("0.01")
            share = (row.balance / count).quantize(cents, rounding=ROUND_DOWN)
            created = []
            for seq in range(1, count + 1):
                amount = share if seq < count else row.balance - share * (count - 1)
                item = ChargeInstalment(
                    connection_id=invoice[0],
                    invoice_external_id=invoice[1],
                    seq=seq,
                    due_on=first + timedelta(days=every_days * (seq - 1)),
                    amount=amount,
                    currency=row.currency,
                    created_at=self.clock(),
                )
                session.add(item)
                created.append(item)
        return created

    # --- enrolment, events, refunds ------------------------------------------------------

    def enroll(self, customer: str) -> HostedLink:
        ref = self.customer_ref(customer)
        with self.sessions() as session:
            try:
                found = customer_view(session, self.tenant.name, ref)
            except EnrolmentError as exc:
                raise CollectingError(str(exc)) from None
        return setup_link(self.sessions, self.processor, found, self.links, self.clock)

    def pay_url(self, connection: str, customer: str, invoice: str | None) -> str | None:
        """A payment link for a reminder: the invoice's, or the customer's open balance (None: nothing owed)."""
        with self.sessions() as session:
            try:
                found = customer_view(session, self.tenant.name, (connection, customer))
            except EnrolmentError:
                return None
        try:
            link, _, _ = payment_link(
                self.sessions,
                self.processor,
                found,
                self.links,
                self.clock,
                invoice=(connection, invoice) if invoice is not None else None,
            )
        except LinkError:
            return None
        return link.url

    def payment_link(self, invoice: str | None, customer: str | None) -> tuple[HostedLink, Decimal, str]:
        """A hosted page to pay one invoice, or a customer's open balance."""
        if (invoice is None) == (customer is None):
            raise CollectingError("name either an invoice or a customer")
        ref = self.invoice_ref(invoice) if invoice is not None else None
        with self.sessions() as session:
            if ref is not None:
                owner = session.execute(
                    sa.select(col(Invoice.customer_external_id)).where(
                        col(Invoice.connection_id) == ref[0], col(Invoice.external_id) == ref[1]
                    )
                ).scalar_one()
                who = (ref[0], owner or "")
            else:
                assert customer is not None
                who = self.customer_ref(customer)
            try:
                view = customer_view(session, self.tenant.name, who)
            except EnrolmentError as exc:
                raise CollectingError(str(exc)) from None
        try:
            return payment_link(self.sessions, self.processor, view, self.links, self.clock, invoice=ref)
        except LinkError as exc:
            raise CollectingError(str(exc)) from None

    def follow(self) -> tuple[FollowReport, int]:
        """Read the processor's events since the cursor; then ask about setup links still open."""
        report = EventFollower(self.sessions, self.processor, self.tenant.name, self.clock).follow(stop=self.stop)
        return report, complete_pending_links(self.sessions, self.processor, self.tenant.name)

    def refund(self, processor_id: str, amount: Decimal | None) -> list[tuple[str, journal.Outcome]]:
        try:
            intent = refunds.ask_refund(self.sessions, processor_id, amount, self.clock)
        except refunds.RefundError as exc:
            raise CollectingError(str(exc)) from None
        outcomes = self.work()
        return [(key, outcome) for key, outcome in outcomes if key == intent.key]


def parse_day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CollectingError(f"{value!r} is not a date (YYYY-MM-DD)") from None
