"""A tenant's auto-pay policy: the rules that choose invoices to charge, and the surcharge.

These are the typed values the config file is read into (``[tenants.T.payments]``
and ``[[tenants.T.payments.rules]]``); the planner evaluates them. Conditions
inside one rule are ANDed; an invoice is charged when any rule matches (OR).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

DEFAULT_RETRY_DAYS = (1, 3, 7)
METHOD_TYPES = frozenset({"card", "us_bank_account"})
CARD_FUNDINGS = frozenset({"credit", "debit", "prepaid"})
SURCHARGE_EXEMPTIONS = frozenset({"us_bank_account", "debit", "prepaid"})
"""What a surcharge may be waived for: a method type, or a card's funding."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """What a rule looks at for one invoice (amount already net of credits applied first)."""

    issue_date: date | None
    due_date: date | None
    amount: Decimal
    currency: str
    from_agreement: bool
    tags: frozenset[str]
    method_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AutopayRule:
    """One rule; every condition given must hold. At least one timing condition is required."""

    name: str
    days_after_issue: int | None = None
    """Charge once ``issue_date + days_after_issue`` has come."""
    on_due_date: bool = False
    """Charge once the due date (from the billing terms) has come."""
    agreement_only: bool = False
    """Only invoices that come from a PSA agreement or a recurring contract."""
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    currencies: frozenset[str] = frozenset()
    """Empty: any currency."""
    tags_any: frozenset[str] = frozenset()
    """The customer must carry one of these tags (empty: no condition)."""
    tags_none: frozenset[str] = frozenset()
    """The customer must carry none of these tags."""
    method_types: frozenset[str] = frozenset()
    """``card`` / ``us_bank_account`` (empty: any)."""

    def earliest(self, issue_date: date | None, due_date: date | None) -> date | None:
        """The first day this rule's timing allows a charge (None: never, a date is missing)."""
        days: list[date] = []
        if self.days_after_issue is not None:
            if issue_date is None:
                return None
            days.append(issue_date + timedelta(days=self.days_after_issue))
        if self.on_due_date:
            if due_date is None:
                return None
            days.append(due_date)
        return max(days) if days else None

    def refusal(self, c: Candidate, today: date) -> str | None:
        """Why this rule does not match ``c`` on ``today`` (None: it matches)."""
        earliest = self.earliest(c.issue_date, c.due_date)
        if earliest is None:
            return "the invoice has no date the rule counts from"
        if today < earliest:
            return f"not before {earliest.isoformat()}"
        if self.agreement_only and not c.from_agreement:
            return "not from an agreement"
        if self.currencies and c.currency not in self.currencies:
            return f"currency {c.currency} not in {sorted(self.currencies)}"
        if self.min_amount is not None and c.amount < self.min_amount:
            return f"{c.amount} below the minimum {self.min_amount}"
        if self.max_amount is not None and c.amount > self.max_amount:
            return f"{c.amount} above the maximum {self.max_amount}"
        if self.tags_any and not (c.tags & self.tags_any):
            return f"customer has none of the tags {sorted(self.tags_any)}"
        if self.tags_none and c.tags & self.tags_none:
            return f"customer has an excluded tag {sorted(c.tags & self.tags_none)}"
        if self.method_types and c.method_type not in self.method_types:
            return f"payment method {c.method_type} not in {sorted(self.method_types)}"
        return None

    def describe(self) -> str:
        parts = []
        if self.days_after_issue is not None:
            parts.append(f"{self.days_after_issue} days after the invoice date")
        if self.on_due_date:
            parts.append("on the due date")
        if self.agreement_only:
            parts.append("from an agreement")
        if self.min_amount is not None:
            parts.append(f"at least {self.min_amount}")
        if self.max_amount is not None:
            parts.append(f"at most {self.max_amount}")
        for label, values in (
            ("currency", self.currencies),
            ("tag", self.tags_any),
            ("not tag", self.tags_none),
            ("method", self.method_types),
        ):
            if values:
                parts.append(f"{label} {'/'.join(sorted(values))}")
        return f"rule {self.name!r}: " + ", ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class SurchargePolicy:
    """Card fees passed on to the customer, as their own line."""

    percent: Decimal = Decimal(0)
    """Of the amount charged, e.g. ``Decimal("2.9")`` for 2.9%."""
    fixed: Decimal = Decimal(0)
    """Added per charge, in the charge's currency."""
    max_percent: Decimal
    """The legal maximum, as a percentage of the amount charged; the surcharge is capped to it."""
    exempt: frozenset[str] = SURCHARGE_EXEMPTIONS
    """Method types and card fundings never surcharged (ACH and debit by default)."""
    description: str = "Card processing surcharge"

    def amount(self, base: Decimal, method_type: str, funding: str | None, exponent: int = 2) -> Decimal:
        """The surcharge on ``base`` for this method, rounded half-up to the currency's minor unit."""
        if base <= 0 or method_type in self.exempt:
            return Decimal(0)
        if method_type == "card" and (funding in self.exempt or (funding is None and self.exempt & CARD_FUNDINGS)):
            # A card whose funding is unknown may be a debit card: never surcharge what may be exempt.
            return Decimal(0)
        quantum = Decimal(1).scaleb(-exponent)
        raw = base * self.percent / 100 + self.fixed
        cap = base * self.max_percent / 100
        # Round the cap down so the rounded surcharge can never exceed the legal maximum.
        capped = min(raw.quantize(quantum, rounding=ROUND_HALF_UP), cap.quantize(quantum, rounding=ROUND_DOWN))
        return max(capped, Decimal(0))


@dataclass(frozen=True, slots=True, kw_only=True)
class AutopayPolicy:
    rules: tuple[AutopayRule, ...] = ()
    retry_days: tuple[int, ...] = DEFAULT_RETRY_DAYS
    """Days after the first soft decline on which the charge is tried again."""
    surcharge: SurchargePolicy | None = None
    apply_credits: bool = True
    """Apply open credit notes and unapplied cash to the balance before charging the rest."""
    excluded_tags: frozenset[str] = field(default_factory=frozenset)
    """Customers with any of these tags are never auto-charged (e.g. ``no-autopay``)."""

    def matching_rule(self, c: Candidate, today: date) -> tuple[AutopayRule | None, list[str]]:
        """The first rule that matches, else None with each rule's reason for refusing."""
        reasons: list[str] = []
        for rule in self.rules:
            why = rule.refusal(c, today)
            if why is None:
                return rule, reasons
            reasons.append(f"{rule.name}: {why}")
        return None, reasons
