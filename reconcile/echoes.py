"""Recognising what arsync wrote when the sync reads it back (echo suppression).

A payment posted by write-back comes back with the next sync as an ordinary
ledger payment. It is recognised by the ledger id the writer returned (or that
``find_posted`` found), and its processor payment is marked as in the ledger's
balances from then on: the auto-pay planner stops counting it as money on its
way, so it is counted once, never twice.

The same holds for the unapplied credit write-back posts for what a payment of
a customer's whole balance left over (an ``overpayment`` posting). Once the
sync has read it back, the processor payment is marked as in the ledger. Auto-pay
then stops offering it as the processor's credit and takes the ledger's
unapplied payment (an overpayment in Xero) instead: the money is counted once.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connectors import jsonwire
from connectors.base import PostingKind
from reconcile.postings import KIND
from sync.models import JournalEntry, Payment, ProcessorPayment


def recognise_echoes(session: Session, tenant: str) -> int:
    """Mark processor payments whose posted ledger payment the sync has read back. Returns how many."""
    waiting = {
        key: row
        for row in session.execute(
            sa.select(ProcessorPayment).where(
                col(ProcessorPayment.tenant_id) == tenant,
                col(ProcessorPayment.applied_in_ledger_at).is_(None),
                col(ProcessorPayment.state) == "succeeded",
            )
        ).scalars()
        for key in [row.key]
    }
    if not waiting:
        return 0
    posted = session.execute(
        sa.select(col(JournalEntry.payload), col(JournalEntry.external_id)).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == KIND,
            col(JournalEntry.status) == "done",
            sa.or_(
                col(JournalEntry.subject).like(f"{PostingKind.PAYMENT.value}:%"),
                col(JournalEntry.subject).like(f"{PostingKind.OVERPAYMENT.value}:%"),
            ),
            col(JournalEntry.external_id).is_not(None),
        )
    )
    marked = 0
    for payload, external_id in posted:
        p = jsonwire.loads(payload)
        row = waiting.get(str(p.get("processor_key")))
        if row is None:
            continue
        synced = session.execute(
            sa.select(col(Payment.synced_at)).where(
                col(Payment.connection_id) == p["connection"], col(Payment.external_id) == external_id
            )
        ).scalar_one_or_none()
        if synced is not None:
            row.applied_in_ledger_at = synced
            marked += 1
    return marked
