"""Following the processor's events into the store, on both databases.

The processor is an in-memory implementation of our port holding an event
list (the Stripe mapping of real event payloads is tested against Stripe's own
fixtures in tests/unit/test_stripe_events.py and over HTTP in the cassette tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session, sessionmaker

from collect.processor_events import EventFollower
from connectors.base import (
    BalanceLine,
    ChargeState,
    ChargeUpdate,
    DisputeUpdate,
    Enrolment,
    EventKind,
    PayoutUpdate,
    ProcessorEvent,
    RefundUpdate,
    SavedMethod,
)
from sync.models import (
    BalanceLineRow,
    InvoiceHold,
    Payout,
    ProcessorCursor,
    ProcessorDispute,
    ProcessorPayment,
    ProcessorRefund,
    SavedPaymentMethod,
)
from tests import collecting as L
from tests.support import FakeClock

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
KEY = "charge:acme:acme-qbo:i1:auto-2026-11-22:1"


class Boom(Exception):
    pass


@dataclass
class FeedProcessor:
    feed: list[ProcessorEvent] = field(default_factory=list)
    lines: dict[str, list[BalanceLine]] = field(default_factory=dict)
    fail_after: int | None = None
    reads: list[str | None] = field(default_factory=list)

    def events(self, after: str | None) -> Iterator[ProcessorEvent]:
        self.reads.append(after)
        ids = [e.id for e in self.feed]
        start = ids.index(after) + 1 if after is not None else 0
        for n, event in enumerate(self.feed[start:]):
            if self.fail_after is not None and n == self.fail_after:
                raise Boom("connection dropped")
            yield event

    def payout_lines(self, payout_id: str) -> Iterator[BalanceLine]:
        yield from self.lines.get(payout_id, [])

    def link_enrolment(self, link_id: str) -> Enrolment | None:
        return None


def event(n: int, kind: EventKind, subject: object, type_: str = "x", at: datetime = T0) -> ProcessorEvent:
    return ProcessorEvent(f"evt_{n}", at + timedelta(minutes=n), type_, kind, subject)  # type: ignore[arg-type]


def ach(state: ChargeState, returned: bool = False, code: str | None = None) -> ChargeUpdate:
    return ChargeUpdate(
        "pi_1", KEY, state, Decimal("100.00"), "USD", code, "us_bank_account", "py_1", returned=returned
    )


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    s = L.ledger(db_url)
    with s.begin() as session:
        L.customer(session, "c1", method="us_bank_account", funding=None)
        L.invoice(session, "i1", "c1", "100.00")
        session.add(
            ProcessorPayment(
                key=KEY,
                processor_id="pi_1",
                tenant_id=L.TENANT,
                connection_id=L.CONN,
                invoice_external_id="i1",
                customer_external_id="c1",
                amount=Decimal("100.00"),
                surcharge=Decimal(0),
                currency="USD",
                state="processing",
                created_at=T0,
                updated_at=T0,
            )
        )
    return s


def follower(sessions: sessionmaker[Session], processor: FeedProcessor, clock: FakeClock) -> EventFollower:
    return EventFollower(sessions, processor, L.TENANT, clock)  # type: ignore[arg-type]


def payment(sessions: sessionmaker[Session]) -> ProcessorPayment:
    with sessions() as s:
        return s.query(ProcessorPayment).filter_by(key=KEY).one()


def test_ach_processing_then_succeeded_then_returned(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    processor = FeedProcessor(
        [
            event(1, EventKind.CHARGE, ach(ChargeState.SUCCEEDED)),
            event(2, EventKind.CHARGE, ach(ChargeState.PROCESSING)),  # late and out of order: ignored
        ]
    )
    follower(sessions, processor, clock).follow()
    row = payment(sessions)
    assert (row.state, row.returned, row.charge_id, row.method_type) == (
        "succeeded",
        False,
        "py_1",
        "us_bank_account",
    )
    processor.feed.append(event(3, EventKind.CHARGE, ach(ChargeState.HARD_DECLINE, returned=True, code="R01")))
    report = follower(sessions, processor, clock).follow()
    assert report.applied == 1 and processor.reads == [None, "evt_2"]
    row = payment(sessions)
    assert (row.state, row.returned, row.decline_code) == ("succeeded", True, "R01")


def test_ach_that_fails_while_processing(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    processor = FeedProcessor([event(1, EventKind.CHARGE, ach(ChargeState.SOFT_DECLINE, code="insufficient_funds"))])
    follower(sessions, processor, clock).follow()
    row = payment(sessions)
    assert (row.state, row.decline_code, row.returned) == ("soft_decline", "insufficient_funds", False)


def test_refunds_disputes_and_payout_lines(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    payout = PayoutUpdate("po_1", Decimal("91.80"), "USD", "paid", date(2026, 11, 25))
    processor = FeedProcessor(
        [
            event(1, EventKind.REFUND, RefundUpdate("re_1", "pi_1", Decimal("5.00"), "USD", "pending", "refund:k")),
            event(2, EventKind.REFUND, RefundUpdate("re_1", "pi_1", Decimal("5.00"), "USD", "succeeded")),
            event(
                3,
                EventKind.DISPUTE,
                DisputeUpdate("dp_1", "pi_1", Decimal("20.00"), "USD", "needs_response", "fraudulent", "py_1"),
            ),
            event(4, EventKind.DISPUTE, DisputeUpdate("dp_1", "pi_1", Decimal("20.00"), "USD", "won", "fraudulent")),
            event(5, EventKind.PAYOUT, PayoutUpdate("po_1", Decimal("91.80"), "USD", "in_transit", date(2026, 11, 25))),
            event(6, EventKind.PAYOUT, payout),
            event(7, EventKind.OTHER, None, "customer.updated"),
        ],
        lines={
            "po_1": [
                BalanceLine(
                    "txn_1",
                    "po_1",
                    "charge",
                    "py_1",
                    "pi_1",
                    Decimal("100.00"),
                    Decimal("3.20"),
                    Decimal("96.80"),
                    "USD",
                    T0,
                ),
                BalanceLine(
                    "txn_2", "po_1", "refund", "re_1", "pi_1", Decimal("-5.00"), Decimal(0), Decimal("-5.00"), "USD", T0
                ),
            ]
        },
    )
    report = follower(sessions, processor, clock).follow()
    assert report.applied == 7 and report.payouts_loaded == ["po_1"]
    assert report.by_kind == {"refund": 2, "dispute": 2, "payout": 2, "other": 1}
    with sessions() as s:
        refund = s.get(ProcessorRefund, "re_1")
        dispute = s.get(ProcessorDispute, "dp_1")
        stored = s.get(Payout, "po_1")
        lines = s.query(BalanceLineRow).order_by(BalanceLineRow.id).all()
        cursor = s.get(ProcessorCursor, L.TENANT)
    assert refund is not None and (refund.status, refund.key, refund.amount) == (
        "succeeded",
        "refund:k",
        Decimal("5.00"),
    )
    assert dispute is not None and (dispute.status, dispute.charge_id) == ("won", "py_1")
    assert stored is not None and (stored.status, stored.amount, stored.lines_loaded_at) == (
        "paid",
        Decimal("91.80"),
        clock(),
    )
    assert [(x.id, x.type, x.amount, x.fee, x.net) for x in lines] == [
        ("txn_1", "charge", Decimal("100.00"), Decimal("3.20"), Decimal("96.80")),
        ("txn_2", "refund", Decimal("-5.00"), Decimal(0), Decimal("-5.00")),
    ]
    assert sum((x.net for x in lines), Decimal(0)) == stored.amount
    assert cursor is not None and cursor.last_event_id == "evt_7"
    again = follower(sessions, processor, clock).follow()
    assert (again.applied, again.payouts_loaded) == (0, [])


def test_a_feed_cut_off_resumes_after_the_last_event_applied(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    processor = FeedProcessor(
        [event(n, EventKind.PAYOUT, PayoutUpdate(f"po_{n}", Decimal(n), "USD", "pending")) for n in range(1, 6)],
        fail_after=3,
    )
    with pytest.raises(Boom):
        follower(sessions, processor, clock).follow()
    with sessions() as s:
        cursor = s.get(ProcessorCursor, L.TENANT)
        assert cursor is not None and cursor.last_event_id == "evt_3"
        assert s.query(Payout).count() == 3
    processor.fail_after = None
    assert follower(sessions, processor, clock).follow().applied == 2
    assert processor.reads[-1] == "evt_3"


def test_an_enrolment_event_records_the_method_for_the_linked_customer(
    sessions: sessionmaker[Session], clock: FakeClock
) -> None:
    method = SavedMethod("cus_c1", "pm_new", "card", "visa", "4242", "credit")
    stranger = SavedMethod("cus_unknown", "pm_other", "card", "visa", "1111", "credit")
    processor = FeedProcessor(
        [
            event(1, EventKind.ENROLMENT, Enrolment("cs_1", "cus_c1", method, T0, "off_session")),
            event(2, EventKind.ENROLMENT, Enrolment("cs_2", "cus_unknown", stranger, T0, "off_session")),
        ]
    )
    follower(sessions, processor, clock).follow()
    with sessions() as s:
        rows = {r.payment_method_id: (r.customer_external_id, r.scope, r.link_id) for r in s.query(SavedPaymentMethod)}
    assert rows == {"pm_c1": ("c1", "off_session", None), "pm_new": ("c1", "off_session", "cs_1")}


def test_a_cursor_older_than_the_processor_keeps_events_is_reported(
    sessions: sessionmaker[Session], clock: FakeClock
) -> None:
    processor = FeedProcessor([event(1, EventKind.OTHER, None, at=clock() - timedelta(days=45))])
    follower(sessions, processor, clock).follow()
    clock.advance(days=40)
    report = follower(sessions, processor, clock).follow()
    assert len(report.warnings) == 1 and "30 days" in report.warnings[0]


def test_a_chargeback_puts_the_invoice_on_hold(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    processor = FeedProcessor(
        [
            event(
                1,
                EventKind.DISPUTE,
                DisputeUpdate("dp_1", "pi_1", Decimal("100.00"), "USD", "needs_response", "fraudulent"),
            ),
            event(2, EventKind.DISPUTE, DisputeUpdate("dp_1", "pi_1", Decimal("100.00"), "USD", "lost", "fraudulent")),
            event(3, EventKind.DISPUTE, DisputeUpdate("dp_2", "pi_unknown", Decimal("9.00"), "USD", "needs_response")),
        ]
    )
    follower(sessions, processor, clock).follow()
    with sessions() as s:
        holds = [(h.invoice_external_id, h.kind, h.reason, h.released_at) for h in s.query(InvoiceHold)]
    assert holds == [("i1", "dispute", "chargeback dp_1: fraudulent", None)]
