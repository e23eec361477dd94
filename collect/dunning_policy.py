"""A tenant's dunning policies: who gets which steps, when, and what each step does.

These are the typed values ``[tenants.T.dunning]`` is read into; the planner
(:mod:`collect.dunning`) evaluates them. A customer is assigned the first policy
whose segment matches. A step fires on its day (relative to the invoice's due
date, or to the previous step) when all its conditions hold; each of its actions
is then one journal entry keyed by (invoice or customer, policy, step, cycle), so
a step never fires twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal, TypeAlias

from collect.send_window import Pacing, SendWindow

RiskLevel = Literal["low", "medium", "high"]
RISK_LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high")
Anchor = Literal["due", "previous"]
FeeBooking = Literal["line", "invoice"]
Summary = Literal["none", "weekly", "monthly"]
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerFacts:
    """What a segment looks at for one customer (balance in the customer's currency)."""

    tags: frozenset[str]
    currency: str
    balance: Decimal
    risk: RiskLevel
    on_autopay: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """Which customers a policy is for; every condition given must hold (empty: no condition)."""

    tags_any: frozenset[str] = frozenset()
    tags_none: frozenset[str] = frozenset()
    currencies: frozenset[str] = frozenset()
    min_balance: Decimal | None = None
    max_balance: Decimal | None = None
    risk_levels: frozenset[RiskLevel] = frozenset()
    autopay: bool | None = None
    """True: only customers on auto-pay; False: only those not on it; None: either."""

    def matches(self, facts: CustomerFacts) -> bool:
        return (
            (not self.tags_any or bool(self.tags_any & facts.tags))
            and not (self.tags_none & facts.tags)
            and (not self.currencies or facts.currency in self.currencies)
            and (self.min_balance is None or facts.balance >= self.min_balance)
            and (self.max_balance is None or facts.balance <= self.max_balance)
            and (not self.risk_levels or facts.risk in self.risk_levels)
            and (self.autopay is None or self.autopay == facts.on_autopay)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFacts:
    """What a step's conditions look at when it comes due for one invoice."""

    customer_balance: Decimal
    unpaid_invoices: int
    tags: frozenset[str]
    last_decline_code: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepConditions:
    min_balance: Decimal | None = None
    """The customer's open balance (in the invoice's currency) must be at least this."""
    min_unpaid_invoices: int | None = None
    tags_any: frozenset[str] = frozenset()
    tags_none: frozenset[str] = frozenset()
    decline_codes: frozenset[str] = frozenset()
    """The invoice's last payment decline must carry one of these codes (empty: no condition)."""

    def failing(self, facts: StepFacts) -> str | None:
        """Why the step does not fire (None: every condition holds)."""
        if self.min_balance is not None and facts.customer_balance < self.min_balance:
            return f"balance {_plain(facts.customer_balance)} is below the step's min_balance {self.min_balance}"
        if self.min_unpaid_invoices is not None and facts.unpaid_invoices < self.min_unpaid_invoices:
            return f"{facts.unpaid_invoices} unpaid invoice(s), the step needs {self.min_unpaid_invoices}"
        if self.tags_any and not (self.tags_any & facts.tags):
            return f"the customer has none of the tags {', '.join(sorted(self.tags_any))}"
        if self.tags_none & facts.tags:
            return f"the customer is tagged {', '.join(sorted(self.tags_none & facts.tags))}"
        if self.decline_codes and facts.last_decline_code not in self.decline_codes:
            return f"last decline code {facts.last_decline_code or 'none'} is not one of the step's"
        return None


def _plain(amount: Decimal) -> Decimal:
    """The amount to the cent when that loses nothing (stores keep different scales: 40.00 vs 40.0000)."""
    cents = amount.quantize(CENT)
    return cents if cents == amount else amount


# --- actions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailAction:
    """A reminder about one invoice, from a template, to the customer's billing contacts."""

    template: str
    kind: Literal["email"] = "email"


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementAction:
    """One message per customer listing every open invoice (not one per invoice)."""

    template: str = "statement"
    kind: Literal["statement"] = "statement"


@dataclass(frozen=True, slots=True, kw_only=True)
class SmsAction:
    template: str
    kind: Literal["sms"] = "sms"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTaskAction:
    """A task on a person's worklist: call the customer."""

    note: str = "Call the customer about the overdue balance"
    assignee: str | None = None
    """Whose worklist the task goes on (None: anyone's)."""
    kind: Literal["call"] = "call"


@dataclass(frozen=True, slots=True, kw_only=True)
class LateFeeAction:
    """A late fee, once per step: flat, or a percent of the overdue principal, within a minimum and a maximum."""

    flat: Decimal = Decimal(0)
    percent: Decimal = Decimal(0)
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    grace_days: int = 0
    """The fee is not charged until the invoice is this many days past due."""
    compound: bool = False
    """False: the percent is taken of the principal only, never of earlier fees."""
    booking: FeeBooking = "line"
    """``line``: a charge line on the invoice; ``invoice``: a separate late-fee invoice."""
    description: str = "Late payment fee"
    kind: Literal["late_fee"] = "late_fee"

    def amount(self, principal: Decimal, earlier_fees: Decimal) -> Decimal:
        """The fee on an invoice owing ``principal`` (plus ``earlier_fees`` already charged on it)."""
        base = principal + earlier_fees if self.compound else principal
        fee = self.flat + (base * self.percent / 100)
        if self.minimum is not None:
            fee = max(fee, self.minimum)
        if self.maximum is not None:
            fee = min(fee, self.maximum)
        return fee.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendAction:
    """Credit hold / service suspension: a signed webhook out and a tag in the ledger; resumed when paid."""

    tag: str = "credit-hold"
    kind: Literal["suspend"] = "suspend"


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectionsAction:
    """Flag the invoice for the collections hand-off (a task; ``submit``: send the package at once)."""

    submit: bool = False
    assignee: str | None = None
    """Whose worklist the hand-off task goes on, when it is not submitted at once."""
    kind: Literal["collections"] = "collections"


Action: TypeAlias = (
    EmailAction | StatementAction | SmsAction | CallTaskAction | LateFeeAction | SuspendAction | CollectionsAction
)
PER_CUSTOMER_ACTIONS = frozenset({"statement", "suspend"})
"""Actions that happen once per customer and step, whichever of its invoices brought the step due."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str
    days: int
    """Days after the anchor (negative: before the due date)."""
    anchor: Anchor = "due"
    """``due``: the invoice's due date; ``previous``: the day the previous step was due."""
    conditions: StepConditions = field(default_factory=StepConditions)
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    name: str
    segment: Segment = field(default_factory=Segment)
    steps: tuple[Step, ...] = ()

    def offsets(self) -> tuple[int, ...]:
        """Each step's day relative to the due date, in step order."""
        days: list[int] = []
        for step in self.steps:
            days.append(step.days if step.anchor == "due" or not days else days[-1] + step.days)
        return tuple(days)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookTarget:
    """An outbound webhook, signed with HMAC-SHA256 of the body under ``secret``."""

    url: str
    secret: str = field(repr=False)
    """Kept out of ``repr`` so that a logged or printed config never shows it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectionsSettings:
    eligible_after_days: int = 30
    """An invoice this many days past due may be handed to the agency."""
    agency_name: str = "Collections agency"
    webhook: WebhookTarget | None = None
    email: str | None = None
    upfront_percent: Decimal = Decimal(0)
    """Of the amount handed over, booked when it is submitted."""
    success_percent: Decimal = Decimal(0)
    """Of what the agency recovers, booked as it is recovered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DunningPolicy:
    """Everything ``[tenants.T.dunning]`` says."""

    paused: bool = False
    """A tenant-wide pause: nothing is sent, charged or escalated."""
    policies: tuple[Policy, ...] = ()
    window: SendWindow = field(default_factory=SendWindow)
    pacing: Pacing = field(default_factory=Pacing)
    run_hour: int = 8
    """The daemon's daily dunning run starts at this hour, in the tenant's time zone."""
    reset_on_partial_payment: bool = True
    """A partial payment starts the invoice's steps again (a new cycle) from the next step due."""
    autopay_grace_days: int = 3
    """An invoice auto-pay will charge gets no overdue reminder until this many days after its charge day."""
    promise_broken: tuple[Action, ...] = ()
    """What runs when a promise to pay is broken (its date passes with less than promised paid)."""
    plan_reminder_days: int = 3
    """A payment plan's instalment is reminded this many days before it falls due."""
    summary: Summary = "none"
    """A weekly (Mondays) or monthly (the 1st) statement to every customer with an open balance."""
    suspension_webhook: WebhookTarget | None = None
    collections: CollectionsSettings = field(default_factory=CollectionsSettings)
    pdf_url: str | None = None
    """A URL template for an invoice's PDF, with ``{connection}`` and ``{invoice}`` (None: no PDF link)."""

    def policy_for(self, facts: CustomerFacts) -> Policy | None:
        return next((policy for policy in self.policies if policy.segment.matches(facts)), None)
