"""Ports and canonical records shared by every connector.

A connector turns a vendor's payloads into the frozen records below and
nothing else: no SDK object leaves ``connectors/``. Every record carries
``(connection, external_id)`` and the source's own last-updated time and
version, so the store can tell a real change from an echo.

Money is ``Decimal`` everywhere; a document's currency sits beside its
amounts. Nothing in this module imports anything outside the standard library.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware (UTC). Injected everywhere."""

Sleeper = Callable[[float], None]
"""Waits the given number of seconds. Injected so tests move time instead."""


class Entity(enum.StrEnum):
    CUSTOMER = "customer"
    INVOICE = "invoice"
    PAYMENT = "payment"
    CREDIT_NOTE = "credit_note"


class InvoiceStatus(enum.StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    VOID = "void"
    DELETED = "deleted"


class DocumentStatus(enum.StrEnum):
    """Status of payments and credit notes."""

    OPEN = "open"
    APPLIED = "applied"
    VOID = "void"
    DELETED = "deleted"


@dataclass(frozen=True)
class Contact:
    email: str
    name: str | None = None
    role: str = "billing"


@dataclass(frozen=True)
class CustomerRecord:
    connection: str
    external_id: str
    updated_at: datetime | None
    version: str | None
    name: str
    currency: str | None
    active: bool
    contacts: tuple[Contact, ...] = ()
    company_name: str | None = None
    phone: str | None = None
    balance: Decimal | None = None
    parent_external_id: str | None = None
    deleted: bool = False


@dataclass(frozen=True)
class DocumentLine:
    line_no: int
    amount: Decimal
    description: str | None = None
    quantity: Decimal | None = None
    unit_price: Decimal | None = None
    item_ref: str | None = None


@dataclass(frozen=True)
class InvoiceRecord:
    connection: str
    external_id: str
    updated_at: datetime | None
    version: str | None
    customer_external_id: str | None
    number: str | None
    issue_date: date | None
    due_date: date | None
    terms: str | None
    currency: str
    total: Decimal
    balance: Decimal
    status: InvoiceStatus
    lines: tuple[DocumentLine, ...] = ()
    memo: str | None = None
    currency_rate: Decimal | None = None
    """Units of home currency per unit of the document's currency, as the source states it."""
    agreement_ref: str | None = None
    """The agreement, recurring template or contract the invoice was raised from (auto-pay rules select on it)."""


@dataclass(frozen=True)
class PaymentApplication:
    target_entity: Entity
    target_external_id: str
    amount: Decimal


@dataclass(frozen=True)
class PaymentRecord:
    connection: str
    external_id: str
    updated_at: datetime | None
    version: str | None
    customer_external_id: str | None
    payment_date: date | None
    currency: str
    amount: Decimal
    unapplied: Decimal
    status: DocumentStatus
    reference: str | None = None
    method: str | None = None
    applications: tuple[PaymentApplication, ...] = ()
    currency_rate: Decimal | None = None
    kind: str = "payment"
    """``payment``, or ``overpayment`` / ``prepayment``: cash received that no invoice has absorbed yet."""


@dataclass(frozen=True)
class CreditNoteRecord:
    connection: str
    external_id: str
    updated_at: datetime | None
    version: str | None
    customer_external_id: str | None
    number: str | None
    issue_date: date | None
    currency: str
    total: Decimal
    remaining: Decimal
    status: DocumentStatus
    lines: tuple[DocumentLine, ...] = ()
    currency_rate: Decimal | None = None


@dataclass(frozen=True)
class Tombstone:
    """The source says this record was deleted."""

    connection: str
    entity: Entity
    external_id: str
    updated_at: datetime | None


Record = CustomerRecord | InvoiceRecord | PaymentRecord | CreditNoteRecord | Tombstone


@dataclass(frozen=True)
class Quarantined:
    """A payload that could not be mapped, kept whole with the reason."""

    connection: str
    entity: Entity
    external_id: str | None
    reason: str
    payload: Mapping[str, Any]


@dataclass
class Page:
    """One response's worth of records for one entity.

    ``resume`` is an opaque position the source accepts to continue a full
    pull after this page (``None`` once the pull is complete). In a change
    feed, ``final`` marks the last page of an entity: the engine moves that
    entity's cursor with it.
    """

    entity: Entity
    records: list[Record] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    resume: str | None = None
    truncated: bool = False
    final: bool = True


@dataclass(frozen=True)
class Window:
    """A closed-open window on the source's last-updated time."""

    start: datetime | None = None
    end: datetime | None = None


class RecordSource(Protocol):
    """A source of canonical records by entity and cursor."""

    connection: str
    entities: tuple[Entity, ...]
    change_horizon_days: int

    def pull(self, entity: Entity, window: Window, resume: str | None) -> Iterator[Page]:
        """Every record of ``entity`` updated inside ``window``, page by page,
        in a stable order, starting after ``resume``."""
        ...

    def changes(self, entities: Sequence[Entity], since: datetime) -> Iterable[Page]:
        """Everything changed since ``since``, deletes included, entity after entity.

        A page with ``truncated`` set hit the source's per-response cap; the
        caller must re-read that entity another way."""
        ...

    def external_ids(self, entity: Entity) -> Iterator[list[str]]:
        """Every live id of ``entity`` at the source, in chunks."""
        ...

    def api_calls(self) -> int:
        """Requests sent so far, for reports and benchmarks."""
        ...


class PostingKind(enum.StrEnum):
    """What write-back puts in the books. Each kind's payload keys (money is ``Decimal``, dates ``date``):

    * ``payment``: ``invoice_external_id``, ``customer_external_id``, ``amount``, ``currency``, ``date``,
      ``account`` (where the money sits until the payout: the clearing account), ``reference``,
      optional ``currency_rate``. A payment against one invoice, received into the clearing account.
      ``currency_rate`` is given when ``currency`` is not the ledger's home currency: units of the home
      currency per unit of ``currency``, the rate the processor converted the payment at (QuickBooks'
      ``ExchangeRate`` states it this way; Xero's ``CurrencyRate`` is its inverse, which the Xero writer sends).
    * ``fee``: ``amount``, ``currency``, ``date``, ``from_account`` (clearing), ``expense_account``,
      ``reference``, optional ``description`` and ``contact_name`` (the processor). An expense paid from clearing.
    * ``payout``: ``amount``, ``currency``, ``date``, ``from_account`` (clearing), ``to_account`` (the bank),
      ``reference`` (the payout id, which the bank statement shows). Clearing to bank: the deposit.
    * ``payout_debit``: ``amount`` (positive: what the processor took), ``currency``, ``date``, ``from_account``
      (the bank), ``to_account`` (clearing), ``reference`` (the payout id). A payout whose lines net below zero
      (refunds and chargebacks beyond the charges): the processor debited the bank, so the money moves back
      from the bank to clearing (QuickBooks: a Transfer; Xero: a BankTransfer), matching the bank-feed line.
    * ``credit_application``: ``invoice_external_id``, ``customer_external_id``, ``source`` (``credit_note`` or
      ``payment``: unapplied cash), ``source_id``, ``amount``, ``currency``, ``date``, ``reference``, optional
      ``source_kind`` (for unapplied cash, the stored ``PaymentRecord.kind``: Xero keeps it as an
      ``overpayment`` or a ``prepayment``). An existing credit of the customer's applied to the invoice.

    * ``payment_reversal``: ``payment_external_id`` (the ledger's id of a payment write-back posted), ``amount``,
      ``currency``, ``date``, ``reference``, ``reason``. The payment is undone (QuickBooks: voided; Xero:
      deleted) and the invoice is owed again: an ACH return, a chargeback, a full refund.
    * ``surcharge``: ``customer_external_id``, ``amount``, ``currency``, ``date``, ``account`` (clearing),
      ``income_account``, ``reference``, optional ``description``. The card surcharge, received into clearing
      as income (QuickBooks: a Deposit with an income line; Xero: a RECEIVE bank transaction), its own line.

    * ``overpayment``: ``customer_external_id``, ``amount``, ``currency``, ``date``, ``account`` (clearing),
      ``reference``, ``processor_key`` (the processor payment's key). What is left of a payment made for a
      customer's whole balance once it is spread over the open invoices: the customer's unapplied credit,
      received into clearing (QuickBooks: a Payment with no linked lines, all of it unapplied; Xero: a
      RECEIVE-OVERPAYMENT bank transaction, whose id is the Overpayment's). Its ledger id is the unapplied cash
      the sync reads back.
    * ``surcharge_reversal``: ``surcharge_external_id`` (the ledger's id of a surcharge write-back posted),
      ``amount``, ``currency``, ``date``, ``reference``, ``reason``. The surcharge of a payment refunded in full
      (amount and surcharge) is undone: QuickBooks deletes its Deposit (the API has no void for a Deposit);
      Xero sets its RECEIVE bank transaction ``DELETED``. One already gone is undone all the same.
    * ``refund``: ``refund_id`` (the processor's), ``invoice_external_id`` (the invoice the refunded payment
      paid), ``customer_external_id``, ``amount``, ``currency``, ``date``, ``account`` (clearing: where the money
      goes back to the customer from), ``reference``, ``refund_item`` (QuickBooks: the Item of the refund line)
      and ``income_account`` (Xero: the account of the credit note's line), optional ``description``. A refund
      smaller than its payment, booked: QuickBooks a RefundReceipt paid from clearing; Xero a credit note
      (ACCRECCREDIT) for the amount and a refund payment on it from clearing. The invoice stays paid.

    * ``late_fee``: ``invoice_external_id`` (the overdue invoice), ``customer_external_id``, ``amount``,
      ``currency``, ``date``, ``reference``, ``booking`` (``line``: a charge line added to that invoice;
      ``invoice``: a separate late-fee invoice for the customer), optional ``description``; from the tenant's
      ``[writeback]``, added when it is posted: ``late_fee_item`` (QuickBooks: the Item of the line) and
      ``late_fee_account`` (Xero: the revenue account of the line). Dunning journals it (its payload also
      carries ``policy``, ``step`` and ``why``, which writers ignore). Xero refuses to edit an invoice with a
      payment applied: a ``line`` booking is then made a separate invoice, and the result's ``booked_as`` says
      so. The result's id is the invoice the fee is on.
    * ``collections_fee``: ``invoice_external_id`` (the invoice placed with the agency), ``customer_external_id``,
      ``amount``, ``currency``, ``date``, ``reference``, ``contact_name`` (the agency), optional ``description``;
      from ``[writeback]``: ``collections_fee_account`` (the expense account) and ``collections_vendor``
      (QuickBooks: the agency's Vendor Id; Xero finds or makes the contact by ``contact_name``). The agency's
      fee, owed to it: QuickBooks a Bill; Xero a bill (an ACCPAY invoice). The collections hand-off journals it.

    ``account``-like values are the ledger's own identifiers (a QuickBooks account Id, a Xero account code).
    ``reference`` is the posting's key unless the payload says otherwise: it is how a posting whose outcome
    is unknown is found again, and how its echo is recognised when the sync reads it back.
    """

    PAYMENT = "payment"
    FEE = "fee"
    PAYOUT = "payout"
    PAYOUT_DEBIT = "payout_debit"
    CREDIT_APPLICATION = "credit_application"
    PAYMENT_REVERSAL = "payment_reversal"
    SURCHARGE = "surcharge"
    REFUND = "refund"
    SURCHARGE_REVERSAL = "surcharge_reversal"
    OVERPAYMENT = "overpayment"
    LATE_FEE = "late_fee"
    COLLECTIONS_FEE = "collections_fee"


@dataclass(frozen=True)
class Posting:
    """One effect to write into the ledger system (used by write-back)."""

    key: str
    kind: str
    """A :class:`PostingKind` value."""
    payload: Mapping[str, Any]
    attempt: int = 1
    """Which attempt this is (the journal's count). Writers mix it into the vendor's idempotency key, so a
    posting released after a person fixed the ledger (a period reopened) is not answered with the first
    refusal the vendor cached. An attempt whose predecessor's outcome is unknown is looked up first."""

    @property
    def identity(self) -> str:
        """What the vendor's idempotency key is derived from: the key and the attempt."""
        return f"{self.key}#{self.attempt}"


@dataclass(frozen=True)
class PostingResult:
    key: str
    ok: bool
    external_id: str | None = None
    reason: str | None = None
    retry: bool = False
    """A failure that may pass by itself (a throttle, an outage). False: a person must act (closed period,
    deleted invoice, validation): the posting is parked with ``reason``, never retried in a loop."""
    booked_as: str | None = None
    """How the ledger booked it, when not as asked (a late fee's ``line`` booked as a separate ``invoice``)."""


class AccountType(enum.StrEnum):
    """What write-back needs to know of an account in the ledger's chart of accounts."""

    BANK = "bank"
    EXPENSE = "expense"
    INCOME = "income"
    OTHER = "other"


@dataclass(frozen=True)
class LedgerAccount:
    ident: str
    """What postings name it by: a QuickBooks account Id, a Xero account code."""
    name: str
    type: AccountType
    active: bool = True


class LedgerWriter(Protocol):
    """Writes postings to the accounting system, idempotently by ``key``."""

    def accounts(self) -> list[LedgerAccount]:
        """The ledger's chart of accounts (write-back's accounts are checked against it)."""
        ...

    def post(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """Post in the vendor's bulk form; one result per posting, in order. Raises ``RetriableError`` when the
        outcome of a whole request is unknown (timeout): the caller then uses :meth:`find_posted`."""
        ...

    def find_posted(self, postings: Sequence[Posting]) -> dict[str, str]:
        """Of ``postings`` (whose outcome is unknown), those already in the ledger: key -> the ledger's id.
        Found by the reference that carries the key."""
        ...


# --- OAuth tokens -----------------------------------------------------------


@dataclass(frozen=True)
class OAuthTokens:
    access_token: str
    refresh_token: str
    access_expires_at: datetime
    refresh_expires_at: datetime | None = None
    account_id: str | None = None
    """The vendor's company id (QuickBooks realm, Xero tenant)."""


class TokenStore(Protocol):
    """Where a connection's tokens live. Implemented by the ledger store."""

    def load(self) -> OAuthTokens | None: ...

    def save(self, tokens: OAuthTokens) -> None: ...

    def refresh_locked(self, stale: OAuthTokens | None, refresh: Callable[[OAuthTokens], OAuthTokens]) -> OAuthTokens:
        """Refresh under a lock shared by every process using this store.

        Re-reads the stored tokens inside the lock: if another run already
        replaced ``stale``, returns the stored pair without refreshing.
        Otherwise calls ``refresh``, persists its result before returning it.
        """
        ...

    def mark_needs_reauth(self, reason: str) -> None: ...


# --- Errors: one taxonomy for every connector --------------------------------


class Actor(enum.StrEnum):
    """Who must act for a failure to go away."""

    CONFIG = "config"
    """The user: fix the config or re-authorise."""
    SYSTEM = "system"
    """The vendor or our code: a bug or an outage that will not pass by itself."""
    TRANSIENT = "transient"
    """Nobody: try again later."""


class ConnectorError(Exception):
    actor: Actor = Actor.SYSTEM

    def __init__(self, message: str, *, actor: Actor | None = None) -> None:
        super().__init__(message)
        if actor is not None:
            self.actor = actor


class FatalError(ConnectorError):
    """Retrying will not help."""


class RetriableError(ConnectorError):
    actor = Actor.TRANSIENT


class RateLimitedError(RetriableError):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReauthRequiredError(ConnectorError):
    """The connection must be authorised again by a person (``arsync connect``)."""

    actor = Actor.CONFIG


# --- Payment processors --------------------------------------------------------


class ChargeState(enum.StrEnum):
    SUCCEEDED = "succeeded"
    PROCESSING = "processing"
    """Asynchronous (ACH): the outcome comes days later as an event."""
    REQUIRES_ACTION = "requires_action"
    """3-D Secure: the customer must act; send a payment link instead."""
    SOFT_DECLINE = "soft_decline"
    """Worth retrying later (insufficient funds, processing error, try again later)."""
    HARD_DECLINE = "hard_decline"
    """Never retry (lost, stolen, expired, invalid): hand over to dunning."""


@dataclass(frozen=True)
class ChargeRequest:
    key: str
    """Our deterministic key: sent as the processor's idempotency key and kept in its metadata."""
    processor_customer_id: str
    payment_method_id: str
    amount: Decimal
    currency: str
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChargeOutcome:
    key: str
    state: ChargeState
    processor_id: str | None
    """The processor's id for the attempt (Stripe PaymentIntent), when one exists."""
    amount: Decimal
    currency: str
    decline_code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class SavedMethod:
    processor_customer_id: str
    payment_method_id: str
    kind: str
    """``card`` or ``us_bank_account``."""
    brand: str | None = None
    last4: str | None = None
    funding: str | None = None
    """``credit`` / ``debit`` / ``prepaid`` for cards: surcharges never apply to debit where configured."""


@dataclass(frozen=True)
class HostedLink:
    """A page at the processor where the customer acts (Stripe Checkout): save a method, or pay."""

    processor_id: str
    """The processor's id for the page (Stripe Checkout Session ``cs_...``)."""
    url: str
    expires_at: datetime | None = None


@dataclass(frozen=True)
class LinkRequest:
    """A hosted page to create, under our deterministic key (idempotency key and metadata)."""

    key: str
    processor_customer_id: str
    success_url: str
    cancel_url: str
    method_types: tuple[str, ...] = ("card", "us_bank_account")
    amount: Decimal | None = None
    """Payment mode: the amount to collect; ``None`` asks for a setup link (save a method, charge nothing)."""
    currency: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Enrolment:
    """A payment method the customer saved through a setup link, with the permission they gave."""

    link_id: str
    processor_customer_id: str
    method: SavedMethod
    enrolled_at: datetime
    scope: str
    """What the customer allowed: ``off_session`` (charges while they are absent, by rule or by the vendor)."""
    metadata: Mapping[str, str] = field(default_factory=dict)


class EventKind(enum.StrEnum):
    CHARGE = "charge"
    """A charge attempt changed state (succeeded, failed, processing, returned after success)."""
    REFUND = "refund"
    DISPUTE = "dispute"
    PAYOUT = "payout"
    ENROLMENT = "enrolment"
    """A setup link was completed: a method was saved."""
    OTHER = "other"


@dataclass(frozen=True)
class ChargeUpdate:
    processor_id: str
    """The PaymentIntent."""
    key: str | None
    """Our key from the attempt's metadata (None: not one of ours)."""
    state: ChargeState
    amount: Decimal
    currency: str
    decline_code: str | None = None
    method_type: str | None = None
    charge_id: str | None = None
    """The processor's charge under the attempt (``ch_...``), which balance transactions name."""
    returned: bool = False
    """A bank debit that had succeeded and was returned (ACH return): the payment is reversed."""


@dataclass(frozen=True)
class RefundUpdate:
    refund_id: str
    payment_processor_id: str | None
    """The PaymentIntent refunded (or the charge, when no PaymentIntent is named)."""
    amount: Decimal
    currency: str
    status: str
    """``pending`` / ``succeeded`` / ``failed`` / ``canceled`` / ``requires_action``."""
    key: str | None = None


@dataclass(frozen=True)
class DisputeUpdate:
    dispute_id: str
    payment_processor_id: str | None
    amount: Decimal
    currency: str
    status: str
    """Stripe's: ``warning_needs_response`` ... ``won`` / ``lost``."""
    reason: str | None = None
    charge_id: str | None = None


@dataclass(frozen=True)
class PayoutUpdate:
    payout_id: str
    amount: Decimal
    currency: str
    status: str
    """``pending`` / ``in_transit`` / ``paid`` / ``failed`` / ``canceled``."""
    arrival_date: date | None = None


@dataclass(frozen=True)
class ProcessorEvent:
    """One event from the processor's feed, already mapped; ``subject`` is ``None`` for kinds we ignore."""

    id: str
    created: datetime
    type: str
    """The processor's own event type (``payment_intent.succeeded``)."""
    kind: EventKind
    subject: ChargeUpdate | RefundUpdate | DisputeUpdate | PayoutUpdate | Enrolment | None = None
    object_id: str | None = None
    """The id of the object the event is about (``pi_...``, ``cs_...``): for an ``ENROLMENT`` without a
    subject, the link to read with ``PaymentProcessor.link_enrolment``."""


@dataclass(frozen=True)
class BalanceLine:
    """One balance transaction inside a payout: what the bank deposit is made of."""

    id: str
    payout_id: str
    type: str
    """``charge`` / ``payment`` / ``refund`` / ``adjustment`` (dispute) / ``stripe_fee`` / ``payout`` ..."""
    source_id: str | None
    """The charge, refund or dispute this line moved money for."""
    payment_processor_id: str | None
    """The PaymentIntent behind the source, when there is one."""
    amount: Decimal
    fee: Decimal
    net: Decimal
    currency: str
    created: datetime
    reporting_category: str | None = None
    exchange_rate: Decimal | None = None
    """When the money was converted (a charge in another currency than the account's balance): ``amount`` in the
    source's currency times this rate is ``amount`` here (Stripe's ``balance_transaction.exchange_rate``)."""


class PaymentProcessor(Protocol):
    """Charges saved payment methods, exactly once by key."""

    def ensure_customer(self, our_customer_id: str, email: str | None, name: str | None) -> str:
        """The processor customer linked to ours (found by our id in its metadata, else created)."""
        ...

    def saved_methods(self, processor_customer_id: str) -> list[SavedMethod]: ...

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Attempt a charge. Raises ``RetriableError`` when the outcome is unknown (timeout)."""
        ...

    def find_charge(self, key: str, processor_customer_id: str) -> ChargeOutcome | None:
        """The attempt made under ``key``, if the processor has one: for outcomes left unknown."""
        ...

    def refund(self, processor_id: str, amount: Decimal | None, key: str) -> str: ...

    def find_refund(self, key: str, processor_id: str) -> str | None:
        """The refund made under ``key`` for the payment ``processor_id``, if any: for outcomes left unknown."""
        ...

    def create_link(self, request: LinkRequest) -> HostedLink:
        """A hosted page: setup mode when ``request.amount`` is None, else payment mode."""
        ...

    def link_enrolment(self, link_id: str) -> Enrolment | None:
        """The method saved through a setup link, once the customer completed it (None until then)."""
        ...

    def events(self, after: str | None) -> Iterator[ProcessorEvent]:
        """Events newer than the event ``after`` (all the processor keeps when None), oldest first."""
        ...

    def payout_lines(self, payout_id: str) -> Iterator[BalanceLine]:
        """The balance transactions a payout pays out (the payout's own line excluded)."""
        ...
