"""Writing canonical records into the ledger store.

``apply_page`` upserts one page inside the caller's transaction: a row is
written only when the source's version or last-updated time moved forward,
so a second sync over unchanged data writes nothing and a boundary
duplicate from the overlap window is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connectors.base import (
    CreditNoteRecord,
    CustomerRecord,
    DocumentLine,
    Entity,
    InvoiceRecord,
    InvoiceStatus,
    PaymentRecord,
    Quarantined,
    Record,
    Tombstone,
)
from sync.models import (
    CreditNote,
    Customer,
    CustomerContact,
    Invoice,
    Payment,
    PaymentApplication,
    QuarantinedRecord,
)
from sync.models import DocumentLine as DocumentLineRow

TABLES: dict[Entity, Any] = {
    Entity.CUSTOMER: Customer,
    Entity.INVOICE: Invoice,
    Entity.PAYMENT: Payment,
    Entity.CREDIT_NOTE: CreditNote,
}


@dataclass
class ApplyCounts:
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    quarantined: int = 0
    written_ids: list[str] = field(default_factory=list)
    """Ids written by one page (not accumulated across pages, to keep memory flat)."""

    def add(self, other: ApplyCounts) -> None:
        self.written += other.written
        self.unchanged += other.unchanged
        self.deleted += other.deleted
        self.quarantined += other.quarantined


def _row_values(record: Record) -> dict[str, Any]:
    base = {
        "connection_id": record.connection,
        "external_id": record.external_id,
        "source_updated_at": record.updated_at,
    }
    match record:
        case CustomerRecord():
            return base | {
                "source_version": record.version,
                "name": record.name,
                "company_name": record.company_name,
                "currency": record.currency,
                "phone": record.phone,
                "active": record.active,
                "balance": record.balance,
                "parent_external_id": record.parent_external_id,
                "deleted": record.deleted,
            }
        case InvoiceRecord():
            return base | {
                "source_version": record.version,
                "customer_external_id": record.customer_external_id,
                "number": record.number,
                "issue_date": record.issue_date,
                "due_date": record.due_date,
                "terms": record.terms,
                "currency": record.currency,
                "total": record.total,
                "balance": record.balance,
                "status": record.status.value,
                "memo": record.memo,
                "currency_rate": record.currency_rate,
                "agreement_ref": record.agreement_ref,
            }
        case PaymentRecord():
            return base | {
                "source_version": record.version,
                "customer_external_id": record.customer_external_id,
                "payment_date": record.payment_date,
                "currency": record.currency,
                "amount": record.amount,
                "unapplied": record.unapplied,
                "status": record.status.value,
                "reference": record.reference,
                "method": record.method,
                "currency_rate": record.currency_rate,
                "kind": record.kind,
            }
        case CreditNoteRecord():
            return base | {
                "source_version": record.version,
                "customer_external_id": record.customer_external_id,
                "number": record.number,
                "issue_date": record.issue_date,
                "currency": record.currency,
                "total": record.total,
                "remaining": record.remaining,
                "status": record.status.value,
                "currency_rate": record.currency_rate,
            }
    raise TypeError(f"not a storable record: {record!r}")


def _is_newer(record_at: datetime | None, record_version: str | None, row: Any) -> bool:
    """Whether the incoming record is a change over the stored row."""
    stored_at, stored_version = row.source_updated_at, row.source_version
    if record_at is not None and stored_at is not None:
        if record_at < stored_at:
            return False
        if record_at > stored_at:
            return True
    return bool(record_version != stored_version)


def _deleted_values(entity: Entity) -> dict[str, Any]:
    if entity is Entity.CUSTOMER:
        return {"deleted": True, "active": False}
    if entity is Entity.INVOICE:
        return {"status": InvoiceStatus.DELETED.value, "balance": Decimal("0")}
    if entity is Entity.PAYMENT:
        return {"status": "deleted", "unapplied": Decimal("0")}
    return {"status": "deleted", "remaining": Decimal("0")}


def _is_deleted(entity: Entity, row: Any) -> bool:
    if entity is Entity.CUSTOMER:
        return bool(row.deleted)
    return bool(row.status == "deleted")


def apply_page(
    session: Session,
    entity: Entity,
    records: Sequence[Record],
    quarantined: Sequence[Quarantined],
    now: datetime,
) -> ApplyCounts:
    counts = ApplyCounts()
    table = TABLES[entity]
    # the last version of a record in a page wins
    latest: dict[tuple[str, str], Record] = {}
    for record in records:
        latest[(record.connection, record.external_id)] = record
    by_connection: dict[str, list[Record]] = {}
    for (connection, _), record in latest.items():
        by_connection.setdefault(connection, []).append(record)
    for connection, group in by_connection.items():
        ids = [r.external_id for r in group]
        existing = {
            row.external_id: row
            for row in session.execute(
                sa.select(
                    table.id,
                    table.external_id,
                    table.source_updated_at,
                    table.source_version,
                    *([table.deleted] if entity is Entity.CUSTOMER else [table.status]),
                ).where(table.connection_id == connection, table.external_id.in_(ids))
            )
        }
        inserts: list[Record] = []
        for record in group:
            row = existing.get(record.external_id)
            if isinstance(record, Tombstone):
                if row is None:
                    counts.unchanged += 1
                    continue
                if _is_deleted(entity, row):
                    counts.unchanged += 1
                    continue
                session.execute(
                    sa.update(table)
                    .where(table.id == row.id)
                    .values(
                        _deleted_values(entity)
                        | {"source_updated_at": record.updated_at or row.source_updated_at, "synced_at": now}
                    )
                )
                counts.deleted += 1
                continue
            if row is None:
                inserts.append(record)
                continue
            if not _is_newer(record.updated_at, record.version, row):
                counts.unchanged += 1
                continue
            session.execute(sa.update(table).where(table.id == row.id).values(_row_values(record) | {"synced_at": now}))
            _replace_children(session, entity, row.id, record)
            counts.written += 1
            counts.written_ids.append(record.external_id)
        if inserts:
            # render_nulls: one INSERT per page, not a new batch whenever the set of empty columns changes
            session.execute(
                sa.insert(table).execution_options(render_nulls=True),
                [_row_values(r) | {"synced_at": now} for r in inserts],
            )
            new_ids = {
                external_id: row_id
                for external_id, row_id in session.execute(
                    sa.select(table.external_id, table.id).where(
                        table.connection_id == connection,
                        table.external_id.in_([r.external_id for r in inserts]),
                    )
                )
            }
            _insert_children(session, entity, [(new_ids[r.external_id], r) for r in inserts])
            counts.written += len(inserts)
            counts.written_ids.extend(r.external_id for r in inserts)
    for item in quarantined:
        quarantine(session, item, now)
        counts.quarantined += 1
    return counts


def _children(entity: Entity, parent_id: int, record: Record) -> tuple[Any, list[dict[str, Any]]]:
    match record:
        case CustomerRecord():
            return CustomerContact, [
                {"customer_id": parent_id, "email": c.email, "name": c.name, "role": c.role} for c in record.contacts
            ]
        case InvoiceRecord() | CreditNoteRecord():
            return DocumentLineRow, [_line(entity, parent_id, line) for line in record.lines]
        case PaymentRecord():
            return PaymentApplication, [
                {
                    "payment_id": parent_id,
                    "target_entity": a.target_entity.value,
                    "target_external_id": a.target_external_id,
                    "amount": a.amount,
                }
                for a in record.applications
            ]
    raise TypeError(record)


def _line(entity: Entity, parent_id: int, line: DocumentLine) -> dict[str, Any]:
    return {
        "document_type": entity.value,
        "document_id": parent_id,
        "line_no": line.line_no,
        "amount": line.amount,
        "description": line.description,
        "quantity": line.quantity,
        "unit_price": line.unit_price,
        "item_ref": line.item_ref,
    }


def _insert_children(session: Session, entity: Entity, parents: Iterable[tuple[int, Record]]) -> None:
    table: Any = None
    rows: list[dict[str, Any]] = []
    for parent_id, record in parents:
        table, more = _children(entity, parent_id, record)
        rows.extend(more)
    if rows:
        session.execute(sa.insert(table).execution_options(render_nulls=True), rows)


def _replace_children(session: Session, entity: Entity, parent_id: int, record: Record) -> None:
    table, rows = _children(entity, parent_id, record)
    if table is CustomerContact:
        session.execute(sa.delete(CustomerContact).where(col(CustomerContact.customer_id) == parent_id))
    elif table is PaymentApplication:
        session.execute(sa.delete(PaymentApplication).where(col(PaymentApplication.payment_id) == parent_id))
    else:
        session.execute(
            sa.delete(DocumentLineRow).where(
                col(DocumentLineRow.document_type) == entity.value,
                col(DocumentLineRow.document_id) == parent_id,
            )
        )
    if rows:
        session.execute(sa.insert(table).execution_options(render_nulls=True), rows)


def quarantine(session: Session, item: Quarantined, now: datetime) -> None:
    """Keep a bad record whole; the same record seen again updates one row."""
    payload = json.dumps(item.payload, default=str, sort_keys=True)
    existing = None
    if item.external_id is not None:
        existing = session.execute(
            sa.select(col(QuarantinedRecord.id)).where(
                col(QuarantinedRecord.connection_id) == item.connection,
                col(QuarantinedRecord.entity) == item.entity.value,
                col(QuarantinedRecord.external_id) == item.external_id,
                col(QuarantinedRecord.resolved_at).is_(None),
            )
        ).scalar_one_or_none()
    if existing is not None:
        session.execute(
            sa.update(QuarantinedRecord)
            .where(col(QuarantinedRecord.id) == existing)
            .values(reason=item.reason, payload=payload, last_seen=now)
        )
        return
    session.add(
        QuarantinedRecord(
            connection_id=item.connection,
            entity=item.entity.value,
            external_id=item.external_id,
            reason=item.reason,
            payload=payload,
            first_seen=now,
            last_seen=now,
        )
    )


def resolve_quarantine(
    session: Session, connection: str, entity: Entity, external_ids: Sequence[str], now: datetime
) -> None:
    """Records that now map cleanly leave the quarantine."""
    if not external_ids:
        return
    session.execute(
        sa.update(QuarantinedRecord)
        .where(
            col(QuarantinedRecord.connection_id) == connection,
            col(QuarantinedRecord.entity) == entity.value,
            col(QuarantinedRecord.external_id).in_(external_ids),
            col(QuarantinedRecord.resolved_at).is_(None),
        )
        .values(resolved_at=now)
    )


def missing_at_source(session: Session, connection: str, entity: Entity, at_source: set[str]) -> tuple[int, list[str]]:
    """How many records the ledger holds live, and which of them ``at_source`` lacks.

    The ledger's ids are streamed, not collected: only the source's set is
    held in memory, and the (usually short) list of the missing.
    """
    table = TABLES[entity]
    query = sa.select(table.external_id).where(table.connection_id == connection)
    if entity is Entity.CUSTOMER:
        query = query.where(table.deleted.is_(False))
    else:
        query = query.where(table.status != "deleted")
    live, gone = 0, []
    for external_id in session.execute(query.execution_options(yield_per=10_000)).scalars():
        live += 1
        if external_id not in at_source:
            gone.append(external_id)
    return live, gone


def mark_deleted(session: Session, connection: str, entity: Entity, external_ids: Iterable[str], now: datetime) -> int:
    ids = list(external_ids)
    table = TABLES[entity]
    total = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        result = session.execute(
            sa.update(table)
            .where(table.connection_id == connection, table.external_id.in_(chunk))
            .values(_deleted_values(entity) | {"synced_at": now})
        )
        total += int(getattr(result, "rowcount", 0) or 0)
    return total


def refresh_statistics(session: Session, entity: Entity) -> None:
    """Let PostgreSQL's planner see how big the entity's tables have grown.

    A bulk pull into fresh tables outruns autovacuum: with statistics that
    still say "a few rows", the planner reads every row of the connection to
    find a page's thousand ids, and each page costs more than the last.
    SQLite needs nothing here.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(sa.text(f"ANALYZE {TABLES[entity].__tablename__}"))
    session.execute(sa.text(f"ANALYZE {DocumentLineRow.__tablename__}"))
