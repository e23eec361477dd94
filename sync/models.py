"""The ledger store's tables.

Every synced row keeps ``(connection_id, external_id)`` and the source's own
last-updated time and version (QuickBooks ``SyncToken``). Money columns are
``Decimal``: ``NUMERIC(20, 4)`` on PostgreSQL, and a decimal string on SQLite,
whose NUMERIC affinity would otherwise round-trip through a float.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel


class MoneyType(TypeDecorator[Decimal]):
    impl = sa.Numeric(20, 4)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.Numeric(20, 4, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money must be Decimal, got {type(value).__name__}")
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(value)


class RateType(MoneyType):
    impl = sa.Numeric(24, 10)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.Numeric(24, 10, asdecimal=True))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware in Python, stored as UTC on both databases."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use an aware UTC datetime")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def money(nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=MoneyType, nullable=True)
    return Field(sa_type=MoneyType, nullable=False)


def rate() -> Any:
    """An exchange rate: a decimal with more places than money."""
    return Field(default=None, sa_type=RateType, nullable=True)


def utc(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Tenant(SQLModel, table=True):
    __tablename__ = "tenant"

    id: str = Field(primary_key=True, max_length=100)
    display_name: str
    timezone: str = "UTC"
    home_currency: str = Field(default="USD", max_length=3)


class Connection(SQLModel, table=True):
    """A link to one company in one outside system, with its OAuth tokens."""

    __tablename__ = "connection"

    id: str = Field(primary_key=True, max_length=100)
    tenant_id: str = Field(foreign_key="tenant.id", index=True)
    kind: str = Field(max_length=40)
    account_id: str | None = None
    status: str = Field(default="ok", max_length=40)
    status_reason: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    access_expires_at: datetime | None = utc()
    refresh_expires_at: datetime | None = utc()
    token_generation: int = 0
    parked_until: datetime | None = utc()
    run_owner: str | None = Field(default=None, max_length=200)
    """The process running a sync of this connection (``host:pid``), while it holds the lease."""
    run_lease_until: datetime | None = utc()


class _Synced(SQLModel):
    """Columns every synced entity carries."""

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    external_id: str = Field(max_length=100)
    source_updated_at: datetime | None = utc()
    source_version: str | None = Field(default=None, max_length=40)
    synced_at: datetime | None = utc()


class Customer(_Synced, table=True):
    __tablename__ = "customer"
    __table_args__ = (sa.UniqueConstraint("connection_id", "external_id"),)

    name: str
    company_name: str | None = None
    currency: str | None = Field(default=None, max_length=3)
    phone: str | None = None
    active: bool = True
    balance: Decimal | None = money(nullable=True)
    parent_external_id: str | None = None
    deleted: bool = False


class CustomerContact(SQLModel, table=True):
    __tablename__ = "customer_contact"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    email: str
    name: str | None = None
    role: str = "billing"


class Invoice(_Synced, table=True):
    __tablename__ = "invoice"
    __table_args__ = (
        sa.UniqueConstraint("connection_id", "external_id"),
        sa.Index("ix_invoice_status_due", "connection_id", "status", "due_date"),
    )

    customer_external_id: str | None = Field(default=None, max_length=100)
    number: str | None = None
    issue_date: date | None = None
    due_date: date | None = None
    terms: str | None = None
    currency: str = Field(max_length=3)
    total: Decimal = money()
    balance: Decimal = money()
    status: str = Field(max_length=20)
    memo: str | None = None
    currency_rate: Decimal | None = rate()
    agreement_ref: str | None = Field(default=None, max_length=100)
    """The agreement or recurring template the invoice was raised from."""


class Payment(_Synced, table=True):
    __tablename__ = "payment"
    __table_args__ = (sa.UniqueConstraint("connection_id", "external_id"),)

    customer_external_id: str | None = Field(default=None, max_length=100)
    payment_date: date | None = None
    currency: str = Field(max_length=3)
    amount: Decimal = money()
    unapplied: Decimal = money()
    status: str = Field(max_length=20)
    reference: str | None = None
    method: str | None = None
    currency_rate: Decimal | None = rate()
    kind: str = Field(default="payment", max_length=20)


class PaymentApplication(SQLModel, table=True):
    __tablename__ = "payment_application"

    id: int | None = Field(default=None, primary_key=True)
    payment_id: int = Field(foreign_key="payment.id", index=True)
    target_entity: str = Field(max_length=20)
    target_external_id: str = Field(max_length=100)
    amount: Decimal = money()


class CreditNote(_Synced, table=True):
    __tablename__ = "credit_note"
    __table_args__ = (sa.UniqueConstraint("connection_id", "external_id"),)

    customer_external_id: str | None = Field(default=None, max_length=100)
    number: str | None = None
    issue_date: date | None = None
    currency: str = Field(max_length=3)
    total: Decimal = money()
    remaining: Decimal = money()
    status: str = Field(max_length=20)
    currency_rate: Decimal | None = rate()


class DocumentLine(SQLModel, table=True):
    """A line of an invoice or a credit note."""

    __tablename__ = "document_line"
    __table_args__ = (sa.Index("ix_document_line_doc", "document_type", "document_id"),)

    id: int | None = Field(default=None, primary_key=True)
    document_type: str = Field(max_length=20)
    document_id: int
    line_no: int
    amount: Decimal = money()
    description: str | None = None
    quantity: Decimal | None = money(nullable=True)
    unit_price: Decimal | None = money(nullable=True)
    item_ref: str | None = None


class SyncCursor(SQLModel, table=True):
    """How far the incremental pull of one entity has read.

    ``synced_through`` is never later than the start of the run that set it
    (the signpost), so rows changed during a run are read again next time.
    """

    __tablename__ = "sync_cursor"

    connection_id: str = Field(foreign_key="connection.id", primary_key=True, max_length=100)
    entity: str = Field(primary_key=True, max_length=20)
    synced_through: datetime | None = utc()


class PullProgress(SQLModel, table=True):
    """An unfinished full pull or backfill, so a restart resumes where it stopped."""

    __tablename__ = "pull_progress"

    connection_id: str = Field(foreign_key="connection.id", primary_key=True, max_length=100)
    entity: str = Field(primary_key=True, max_length=20)
    kind: str = Field(primary_key=True, max_length=20)
    started_at: datetime | None = utc(nullable=False)
    window_start: datetime | None = utc()
    window_end: datetime | None = utc()
    resume: str | None = None
    rows: int = 0


class SyncRun(SQLModel, table=True):
    __tablename__ = "sync_run"

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", index=True, max_length=100)
    kind: str = Field(max_length=20)
    status: str = Field(max_length=20)
    started_at: datetime | None = utc(nullable=False)
    finished_at: datetime | None = utc()
    api_calls: int = 0
    rows_written: int = 0
    rows_unchanged: int = 0
    rows_quarantined: int = 0
    rows_deleted: int = 0
    error: str | None = None


class QuarantinedRecord(SQLModel, table=True):
    """A source record that could not be mapped, kept whole with its reason."""

    __tablename__ = "quarantine"
    __table_args__ = (sa.Index("ix_quarantine_conn_entity", "connection_id", "entity", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    entity: str = Field(max_length=20)
    external_id: str | None = Field(default=None, max_length=100)
    reason: str
    payload: str
    first_seen: datetime | None = utc(nullable=False)
    last_seen: datetime | None = utc(nullable=False)
    resolved_at: datetime | None = utc()


class JournalEntry(SQLModel, table=True):
    """One external effect (a charge, a posting, a fee, a deposit, an email), keyed deterministically.

    Written in the same transaction as the decision to act, before the call.
    ``status``: ``pending`` (to do, at ``next_attempt_at``), ``in_flight`` (a
    worker holds the lease and may have made the call), ``done``, ``failed``
    (given up, with ``error``). An ``in_flight`` entry whose lease expired
    has an unknown outcome: the next worker looks the effect up before acting.
    """

    __tablename__ = "journal"
    __table_args__ = (
        sa.Index("ix_journal_due", "kind", "status", "next_attempt_at"),
        sa.Index("ix_journal_tenant_kind_created", "tenant_id", "kind", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=250, unique=True)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    kind: str = Field(max_length=40)
    subject: str | None = Field(default=None, max_length=200)
    payload: str
    status: str = Field(default="pending", max_length=20)
    attempts: int = 0
    next_attempt_at: datetime | None = utc(nullable=False)
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = utc()
    external_id: str | None = Field(default=None, max_length=200)
    result: str | None = None
    error: str | None = None
    created_at: datetime | None = utc(nullable=False)
    updated_at: datetime | None = utc(nullable=False)


# --- Collecting: tags, holds, processor links, saved methods, charges, payouts -------------


class CustomerTag(SQLModel, table=True):
    """A label on a ledger customer (``msp``, ``no-autopay``) that auto-pay rules and dunning select on."""

    __tablename__ = "customer_tag"

    connection_id: str = Field(foreign_key="connection.id", primary_key=True, max_length=100)
    customer_external_id: str = Field(primary_key=True, max_length=100)
    tag: str = Field(primary_key=True, max_length=60)


class InvoiceHold(SQLModel, table=True):
    """Something that stops collecting an invoice for a while: a dispute, a hold, a promise to pay."""

    __tablename__ = "invoice_hold"
    __table_args__ = (sa.Index("ix_invoice_hold_invoice", "connection_id", "invoice_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    invoice_external_id: str = Field(max_length=100)
    kind: str = Field(max_length=20)
    """``dispute`` / ``hold`` stop auto-pay and dunning; ``promise`` (to pay ``amount`` by ``until``),
    ``plan`` (instalments in ``charge_instalment``) and ``extension`` (due date moved to ``until``) pause
    dunning only."""
    reason: str
    until: date | None = None
    created_at: datetime | None = utc(nullable=False)
    released_at: datetime | None = utc()
    amount: Decimal | None = money(nullable=True)
    """A promise's amount."""
    balance_at: Decimal | None = money(nullable=True)
    """The invoice's balance when the promise was made: it is kept when the balance falls by ``amount``."""
    outcome: str | None = Field(default=None, max_length=20)
    """How it ended: ``kept`` / ``broken`` (promises), ``resolved`` (disputes), ``released``."""


class ProcessorLink(SQLModel, table=True):
    """A ledger customer's customer at the payment processor (whose metadata carries our id)."""

    __tablename__ = "processor_link"

    connection_id: str = Field(foreign_key="connection.id", primary_key=True, max_length=100)
    customer_external_id: str = Field(primary_key=True, max_length=100)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100, index=True)
    processor_customer_id: str = Field(max_length=100, index=True)
    created_at: datetime | None = utc(nullable=False)


class HostedLinkRow(SQLModel, table=True):
    """A hosted page sent to a customer: a setup link (enrolment) or a payment link."""

    __tablename__ = "hosted_link"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=250, unique=True)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    customer_external_id: str = Field(max_length=100)
    invoice_external_id: str | None = Field(default=None, max_length=100)
    mode: str = Field(max_length=20)
    """``setup`` or ``payment``."""
    processor_id: str = Field(max_length=200, unique=True)
    url: str
    amount: Decimal | None = money(nullable=True)
    currency: str | None = Field(default=None, max_length=3)
    created_at: datetime | None = utc(nullable=False)
    expires_at: datetime | None = utc()
    completed_at: datetime | None = utc()


class SavedPaymentMethod(SQLModel, table=True):
    """A card or bank account a customer enrolled, with when and what they allowed."""

    __tablename__ = "saved_payment_method"
    __table_args__ = (sa.Index("ix_saved_method_customer", "connection_id", "customer_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    customer_external_id: str = Field(max_length=100)
    processor_customer_id: str = Field(max_length=100)
    payment_method_id: str = Field(max_length=100, unique=True)
    kind: str = Field(max_length=30)
    brand: str | None = Field(default=None, max_length=30)
    last4: str | None = Field(default=None, max_length=4)
    funding: str | None = Field(default=None, max_length=20)
    scope: str = Field(max_length=30)
    """``off_session``: the customer allowed charges while absent (auto-pay and vendor-initiated)."""
    enrolled_at: datetime | None = utc(nullable=False)
    link_id: str | None = Field(default=None, max_length=200)
    active: bool = True


class ProcessorPayment(SQLModel, table=True):
    """One charge attempt at the processor (ours, by key, or one we learnt of from its events)."""

    __tablename__ = "processor_payment"
    __table_args__ = (sa.Index("ix_processor_payment_invoice", "connection_id", "invoice_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=250, unique=True)
    processor_id: str | None = Field(default=None, max_length=100, unique=True)
    charge_id: str | None = Field(default=None, max_length=100, index=True)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    connection_id: str | None = Field(default=None, max_length=100)
    invoice_external_id: str | None = Field(default=None, max_length=100)
    customer_external_id: str | None = Field(default=None, max_length=100)
    amount: Decimal = money()
    """Applied to the invoice (the surcharge is not part of it)."""
    surcharge: Decimal = money()
    currency: str = Field(max_length=3)
    method_type: str | None = Field(default=None, max_length=30)
    payment_method_id: str | None = Field(default=None, max_length=100)
    state: str = Field(max_length=20)
    decline_code: str | None = Field(default=None, max_length=60)
    returned: bool = False
    """A bank debit returned after it had succeeded: the payment is reversed."""
    created_at: datetime | None = utc(nullable=False)
    updated_at: datetime | None = utc(nullable=False)
    applied_in_ledger_at: datetime | None = utc()
    """When the ledger's balance came to include this payment (set by write-back); until then it is
    subtracted from the ledger balance when deciding what to charge."""


class ProcessorRefund(SQLModel, table=True):
    __tablename__ = "processor_refund"

    refund_id: str = Field(primary_key=True, max_length=100)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    payment_processor_id: str | None = Field(default=None, max_length=100, index=True)
    key: str | None = Field(default=None, max_length=250)
    amount: Decimal = money()
    currency: str = Field(max_length=3)
    status: str = Field(max_length=20)
    updated_at: datetime | None = utc(nullable=False)


class ProcessorDispute(SQLModel, table=True):
    __tablename__ = "processor_dispute"

    dispute_id: str = Field(primary_key=True, max_length=100)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    payment_processor_id: str | None = Field(default=None, max_length=100, index=True)
    charge_id: str | None = Field(default=None, max_length=100)
    amount: Decimal = money()
    currency: str = Field(max_length=3)
    status: str = Field(max_length=40)
    reason: str | None = None
    updated_at: datetime | None = utc(nullable=False)


class Payout(SQLModel, table=True):
    """Money the processor sent to the bank: one line on the bank statement, named by ``payout_id``."""

    __tablename__ = "payout"

    payout_id: str = Field(primary_key=True, max_length=100)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100, index=True)
    amount: Decimal = money()
    currency: str = Field(max_length=3)
    status: str = Field(max_length=20)
    arrival_date: date | None = None
    lines_loaded_at: datetime | None = utc()
    updated_at: datetime | None = utc(nullable=False)


class BalanceLineRow(SQLModel, table=True):
    """One balance transaction inside a payout: gross, fee and net for a charge, refund or dispute."""

    __tablename__ = "balance_line"

    id: str = Field(primary_key=True, max_length=100)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    payout_id: str = Field(max_length=100, index=True)
    type: str = Field(max_length=40)
    source_id: str | None = Field(default=None, max_length=100)
    payment_processor_id: str | None = Field(default=None, max_length=100)
    amount: Decimal = money()
    fee: Decimal = money()
    net: Decimal = money()
    currency: str = Field(max_length=3)
    created: datetime | None = utc(nullable=False)
    reporting_category: str | None = Field(default=None, max_length=60)
    exchange_rate: Decimal | None = rate()
    """Stripe's ``exchange_rate`` of a converted charge: its amount in the charge's currency times this rate is
    ``amount`` here. Write-back posts a payment in another currency than the ledger's with it."""


class ProcessorCursor(SQLModel, table=True):
    """How far a tenant's processor event feed has been read (the newest event applied)."""

    __tablename__ = "processor_cursor"

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=100)
    last_event_id: str | None = Field(default=None, max_length=100)
    last_event_created: datetime | None = utc()
    updated_at: datetime | None = utc(nullable=False)


class ChargeInstalment(SQLModel, table=True):
    """One instalment of an invoice's payment plan: charged on its day instead of the whole balance."""

    __tablename__ = "charge_instalment"
    __table_args__ = (sa.UniqueConstraint("connection_id", "invoice_external_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    invoice_external_id: str = Field(max_length=100)
    seq: int
    due_on: date
    amount: Decimal = money()
    currency: str = Field(max_length=3)
    created_at: datetime | None = utc(nullable=False)


# --- Dunning: per-invoice schedule state, contacts not to use, tasks, messages, collections -----------


class DunningState(SQLModel, table=True):
    """Where an invoice stands in its dunning schedule: the cycle (a partial payment starts a new one),
    the day the cycle's steps are counted from, and the balance last seen."""

    __tablename__ = "dunning_state"

    connection_id: str = Field(foreign_key="connection.id", primary_key=True, max_length=100)
    invoice_external_id: str = Field(primary_key=True, max_length=100)
    policy: str = Field(max_length=100)
    cycle: int = 0
    anchor: date
    """The day the cycle's step days are counted from: the due date (or its extension), then a partial
    payment's day."""
    last_step: int = -1
    """The index in the policy's steps of the last step fired (or passed over) in this cycle."""
    last_balance: Decimal = money()
    updated_at: datetime | None = utc(nullable=False)


class ContactBlock(SQLModel, table=True):
    """A channel not to use for a customer: opted out (``opt_out``) or undeliverable (``bounce``).
    ``address`` None: every address of that channel."""

    __tablename__ = "contact_block"
    __table_args__ = (sa.Index("ix_contact_block_customer", "connection_id", "customer_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    customer_external_id: str = Field(max_length=100)
    channel: str = Field(max_length=10)
    address: str | None = Field(default=None, max_length=320)
    kind: str = Field(max_length=20)
    reason: str
    created_at: datetime | None = utc(nullable=False)


class CustomerLocale(SQLModel, table=True):
    """Where a customer reads its mail: the send window opens in its time zone, on its country's business days."""

    __tablename__ = "customer_locale"

    connection_id: str = Field(foreign_key="connection.id", primary_key=True, max_length=100)
    customer_external_id: str = Field(primary_key=True, max_length=100)
    timezone: str | None = Field(default=None, max_length=60)
    country: str | None = Field(default=None, max_length=2)
    subdivision: str | None = Field(default=None, max_length=10)


class DunningTask(SQLModel, table=True):
    """Work for a person: a call, a collections hand-off, a broken promise to follow up."""

    __tablename__ = "dunning_task"
    __table_args__ = (sa.Index("ix_dunning_task_open", "tenant_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=250, unique=True)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    customer_external_id: str = Field(max_length=100)
    invoice_external_id: str | None = Field(default=None, max_length=100)
    kind: str = Field(max_length=20)
    note: str
    policy: str | None = Field(default=None, max_length=100)
    step: str | None = Field(default=None, max_length=100)
    assignee: str | None = Field(default=None, max_length=100)
    """Whose worklist the task is on (None: anyone's)."""
    status: str = Field(default="open", max_length=20)
    outcome: str | None = Field(default=None, max_length=20)
    outcome_note: str | None = None
    created_at: datetime | None = utc(nullable=False)
    done_at: datetime | None = utc()


class DunningMessage(SQLModel, table=True):
    """A message that went out (or bounced): what pacing counts and what a customer's history shows."""

    __tablename__ = "dunning_message"
    __table_args__ = (
        sa.Index("ix_dunning_message_customer", "connection_id", "customer_external_id", "sent_at"),
        sa.Index("ix_dunning_message_tenant", "tenant_id", "sent_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=250, unique=True)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    customer_external_id: str = Field(max_length=100)
    invoice_external_id: str | None = Field(default=None, max_length=100)
    channel: str = Field(max_length=10)
    address: str = Field(max_length=320)
    template: str = Field(max_length=100)
    message_id: str | None = Field(default=None, max_length=250)
    status: str = Field(max_length=20)
    sent_at: datetime | None = utc(nullable=False)


class LateFeeWaiver(SQLModel, table=True):
    """A late fee forgiven: ``step`` None waives every fee on the invoice from now on."""

    __tablename__ = "late_fee_waiver"

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    invoice_external_id: str = Field(max_length=100, index=True)
    step: str | None = Field(default=None, max_length=100)
    reason: str
    created_at: datetime | None = utc(nullable=False)


class CollectionsPlacement(SQLModel, table=True):
    """An invoice handed to a collections agency, and how it stands."""

    __tablename__ = "collections_placement"
    __table_args__ = (sa.UniqueConstraint("connection_id", "invoice_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=100)
    connection_id: str = Field(foreign_key="connection.id", max_length=100)
    invoice_external_id: str = Field(max_length=100)
    customer_external_id: str = Field(max_length=100)
    amount: Decimal = money()
    """The balance handed over."""
    currency: str = Field(max_length=3)
    agency: str
    notes: str = ""
    status: str = Field(max_length=20)
    """``submitted`` (journaled, on its way), ``placed`` (the agency has it), ``recovered``, ``closed``."""
    recovered: Decimal = money()
    submitted_at: datetime | None = utc(nullable=False)
    updated_at: datetime | None = utc(nullable=False)
