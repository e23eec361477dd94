"""Property: no sequence of plans, runs, crashes, restarts, declines and ledger catch-ups charges
an invoice more than it owed.

The processor is an in-memory implementation of our port that, like
localstripe, ignores idempotency keys: every ``charge`` call moves money. So
whatever holds here holds because of the journal and the planner, not the
processor. A "crash" is the handler dying before or after the call; the entry
stays in flight and its lease runs out, exactly as when a worker is killed
(the SIGKILL tests do that with real processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import SQLModel

from collect.autopay import journal_plan, plan_charges
from collect.charging import KIND, ChargeExecutor
from collect.policy import AutopayPolicy, AutopayRule
from connectors import jsonwire
from connectors.base import ChargeOutcome, ChargeRequest, ChargeState, RetriableError
from sync import journal
from sync.db import make_engine
from sync.models import Invoice, ProcessorPayment, Tenant
from tests import collecting as L

START = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
BALANCES = {"i1": Decimal("100.00"), "i2": Decimal("40.50"), "i3": Decimal("7.25")}
POLICY = AutopayPolicy(rules=(AutopayRule(name="on-issue", days_after_issue=0),), retry_days=(1, 3))


class Crash(Exception):
    """The worker dies before making the call."""


@dataclass
class CarelessProcessor:
    """Moves money on every call, whatever the key; answers by script."""

    answers: list[str] = field(default_factory=list)
    moved: list[ChargeOutcome] = field(default_factory=list)

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        answer = self.answers.pop(0) if self.answers else "succeed"
        if answer == "crash-before":
            raise Crash("worker died before the call")
        state = {
            "soft": ChargeState.SOFT_DECLINE,
            "hard": ChargeState.HARD_DECLINE,
            "processing": ChargeState.PROCESSING,
        }.get(answer, ChargeState.SUCCEEDED)
        outcome = ChargeOutcome(request.key, state, f"pi_{len(self.moved)}", request.amount, request.currency, "x")
        self.moved.append(outcome)
        if answer == "crash-after":
            raise RetriableError("worker died after the call")
        return outcome

    def find_charge(self, key: str, processor_customer_id: str) -> ChargeOutcome | None:
        found = [o for o in self.moved if o.key == key]
        return found[0] if found else None


Step = tuple[str, str]

steps = st.lists(
    st.tuples(
        st.sampled_from(["plan", "run", "day", "ledger-catches-up", "plan-and-run"]),
        st.sampled_from(["succeed", "soft", "hard", "processing", "crash-before", "crash-after"]),
    ),
    min_size=1,
    max_size=25,
)


def _ledger(directory: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{directory / 'ledger.db'}")
    SQLModel.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as s:
        s.add(Tenant(id=L.TENANT, display_name="Acme"))
        s.flush()
        s.add(L.Connection(id=L.CONN, tenant_id=L.TENANT, kind="quickbooks"))
        s.flush()
        L.customer(s, "c1")
        for invoice, balance in BALANCES.items():
            L.invoice(s, invoice, "c1", str(balance), issued=date(2026, 11, 1))
        L.credit_note(s, "cn1", "c1", "5.00")
    return sessions


@settings(max_examples=60, deadline=None)
@given(steps)
def test_no_sequence_charges_more_than_owed(script: list[Step]) -> None:
    with TemporaryDirectory() as tmp:
        for _ in _run(Path(tmp), script):
            pass


def _run(directory: Path, script: list[Step]) -> Iterator[None]:
    sessions = _ledger(directory)
    now = [START]
    processor = CarelessProcessor()

    def clock() -> datetime:
        return now[0]

    executor = ChargeExecutor(sessions, processor, clock, retry_days=POLICY.retry_days)  # type: ignore[arg-type]

    def plan() -> None:
        with sessions.begin() as s:
            journal_plan(s, plan_charges(s, L.TENANT, [L.CONN], POLICY, now[0].date()), now[0])

    def run(answer: str) -> None:
        processor.answers = [answer]
        # A handler that dies is caught by run_due: the entry stays in flight, as if the process had been killed.
        journal.run_due(sessions, KIND, "w", executor, clock, lease=timedelta(minutes=5))

    for action, answer in script:
        if action in ("plan", "plan-and-run"):
            plan()
        if action in ("run", "plan-and-run"):
            run(answer)
        if action == "day":
            now[0] += timedelta(days=1)
        if action == "ledger-catches-up":
            _write_back(sessions, now[0])
        _check(sessions, processor)
        yield
    # Then everything settles: leases run out, retries fall due, workers finish.
    for _ in range(10):
        now[0] += timedelta(days=3)
        run("succeed")
        plan()
        run("succeed")
        _write_back(sessions, now[0])
        _check(sessions, processor)
    _check_collected(sessions, processor)
    yield


def _write_back(sessions: sessionmaker[Session], now: datetime) -> None:
    """What write-back and the next sync do: the ledger's balance comes to include the charges."""
    with sessions.begin() as s:
        for payment in s.execute(
            sa.select(ProcessorPayment).where(
                ProcessorPayment.state == "succeeded",  # type: ignore[arg-type]
                ProcessorPayment.applied_in_ledger_at.is_(None),  # type: ignore[union-attr]
            )
        ).scalars():
            invoice = s.execute(
                sa.select(Invoice).where(Invoice.external_id == payment.invoice_external_id)  # type: ignore[arg-type]
            ).scalar_one()
            invoice.balance -= payment.amount
            invoice.status = "paid" if invoice.balance == 0 else "partially_paid"
            payment.applied_in_ledger_at = now


def _settled_amounts(sessions: sessionmaker[Session], processor: CarelessProcessor) -> dict[str, Decimal]:
    """Per invoice: money moved by charges plus credits journaled to it."""
    moved = (ChargeState.SUCCEEDED, ChargeState.PROCESSING)
    totals = dict.fromkeys(BALANCES, Decimal(0))
    for o in processor.moved:
        if o.state in moved:
            totals[o.key.split(":")[3]] += o.amount
    with sessions() as s:
        for e in journal.entries(s):
            if e.kind == "apply_credit":
                totals[jsonwire.loads(e.payload)["invoice"]] += Decimal(jsonwire.loads(e.payload)["amount"])
    return totals


def _check(sessions: sessionmaker[Session], processor: CarelessProcessor) -> None:
    keys = [o.key for o in processor.moved if o.state in (ChargeState.SUCCEEDED, ChargeState.PROCESSING)]
    assert len(keys) == len(set(keys)), f"a key moved money twice: {keys}"
    for invoice, settled in _settled_amounts(sessions, processor).items():
        assert settled <= BALANCES[invoice], f"{invoice} owed {BALANCES[invoice]}; charged and credited {settled}"


def _check_collected(sessions: sessionmaker[Session], processor: CarelessProcessor) -> None:
    """Liveness, so the property is not met by charging nothing: an invoice never declined is collected in full."""
    declined = {
        o.key.split(":")[3] for o in processor.moved if o.state not in (ChargeState.SUCCEEDED, ChargeState.PROCESSING)
    }
    for invoice, settled in _settled_amounts(sessions, processor).items():
        if invoice not in declined:
            assert settled == BALANCES[invoice], f"{invoice} owed {BALANCES[invoice]}; collected {settled}"
