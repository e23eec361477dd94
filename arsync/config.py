"""Configuration: one TOML file, validated at start-up into one frozen, typed object.

``load_config`` reads the file with :mod:`tomllib`, checks every section, resolves
secrets (environment variables or a separate credentials file) and returns a
:class:`Config`. When anything is wrong it raises :class:`ConfigError` carrying
*every* problem found, each naming the file and the dotted key, so that a user
fixes the whole file in one pass instead of one error per restart.

Validation happens in two layers. The ``_Raw*`` pydantic models describe the
file exactly as written (strict types, unknown keys refused); the public frozen
dataclasses are what the rest of the program receives. Secret values travel only
inside :class:`Secret`, whose ``repr``/``str`` are masked, and no error message
ever quotes a value read from a secret-bearing key.
"""

from __future__ import annotations

import difflib
import functools
import hmac
import itertools
import math
import os
import re
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, NamedTuple, NoReturn, TypeAlias, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from collect.policy import DEFAULT_RETRY_DAYS, SURCHARGE_EXEMPTIONS, AutopayPolicy, AutopayRule, SurchargePolicy

if TYPE_CHECKING:  # arsync.config_dunning builds on this module, so it is imported where it is used
    from arsync.config_dunning import DunningConfig

__all__ = [
    "ENTITIES",
    "KNOWN_KINDS",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ConnectionConfig",
    "DaemonConfig",
    "DatabaseConfig",
    "PaymentsConfig",
    "QuickBooksConnectionConfig",
    "RateLimitConfig",
    "Secret",
    "TenantConfig",
    "UnknownConnectionError",
    "XeroConnectionConfig",
    "XeroRateLimitConfig",
    "default_config",
    "load_config",
]

Entity = Literal["customer", "invoice", "payment", "credit_note"]
ENTITIES: Final[tuple[Entity, ...]] = typing.get_args(Entity)
KNOWN_KINDS: Final[tuple[str, ...]] = ("quickbooks", "xero")
Processor = Literal["stripe"]

DEFAULT_DATABASE_URL: Final = "sqlite:///arsync.db"
QUICKBOOKS_API_BASE: Final = {
    "production": "https://quickbooks.api.intuit.com/v3",
    "sandbox": "https://sandbox-quickbooks.api.intuit.com/v3",
}
QUICKBOOKS_TOKEN_URL: Final = "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"
XERO_API_BASE: Final = "https://api.xero.com/api.xro/2.0"
XERO_IDENTITY_BASE: Final = "https://api.xero.com"  # serves GET /connections
XERO_TOKEN_URL: Final = "https://identity.xero.com/connect/token"
XERO_AUTHORIZE_URL: Final = "https://login.xero.com/identity/connect/authorize"
# offline_access is what makes Xero issue a refresh token; the daemon cannot work without it.
XERO_SCOPES: Final[tuple[str, ...]] = (
    "offline_access",
    "accounting.transactions",
    "accounting.contacts",
    "accounting.settings.read",
)
XERO_MAX_PAGE_SIZE: Final = 1000
STRIPE_API_BASE: Final = "https://api.stripe.com"
STRIPE_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_CHARGE_HOUR: Final = 9
DEFAULT_FOLLOW_MINUTES: Final = 15

_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Upper case only: Intuit client ids and secrets and Xero client secrets are mixed case,
# so a secret pasted into a ``*_env`` key by mistake is refused here and never echoed
# back as a "name".
_ENV_NAME_RE: Final = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_CURRENCY_RE: Final = re.compile(r"^[A-Z]{3}$")
_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_SCOPE_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*$")
# Money and percentages: plain decimal notation only ("12.50", "3"), never a TOML float.
_DECIMAL_RE: Final = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_MASK: Final = "********"


# --------------------------------------------------------------------------- problems


class ConfigProblem(NamedTuple):
    """One thing wrong with the configuration.

    ``key`` is a dotted path such as ``tenants.acme.connections.acme-qbo.realm_id``
    (list items as ``entities[2]``); it is empty when the problem concerns the
    whole file (for example, the file does not exist).
    """

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists everything found."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigProblem]]]:
        return (ConfigError, (self.problems,))


class UnknownConnectionError(KeyError):
    """``Config.connection`` was asked for a name that is not configured."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- secrets


class Secret:
    """A secret value that prints as ``********``; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return _MASK

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


# --------------------------------------------------------------------------- typed result


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    """Per-connection request budget; the defaults are QuickBooks Online's limits."""

    per_second: int = 10
    per_minute: int = 500
    concurrent: int = 10


ALLOCATION_CLASSES: tuple[str, ...] = ("collection_fees", "late_fees", "principal")
"""Classes of invoices a balance payment is spread over, in the default order (as collection agencies apply
money: their fees, then late fees, then principal)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WritebackConfig:
    """Where write-back books a connection's collected money (``[tenants.T.connections.C.writeback]``).

    Accounts are the ledger's own identifiers: a QuickBooks account Id, a Xero account code.
    """

    clearing_account: str
    """Where payments sit between the charge and the payout (an Undeposited Funds-like bank account)."""
    bank_account: str
    """Where payouts land: the account the bank feed reconciles."""
    fee_account: str
    """The expense account for processing fees."""
    surcharge_account: str | None = None
    """The income account for card surcharges (required when the tenant adds them)."""
    refund_account: str | None = None
    """Xero: the revenue account of the credit note a partial refund is booked as (required to book them)."""
    refund_item: str | None = None
    """QuickBooks: the Item (its Id) of a RefundReceipt's line, whose income account a partial refund reduces
    (required to book them)."""
    allocation_order: tuple[str, ...] = ALLOCATION_CLASSES
    """The order a payment for a customer's whole balance pays classes of invoices in (oldest first within a
    class): ``collection_fees``, ``late_fees``, ``principal``, each once."""
    late_fee_items: tuple[str, ...] = ()
    """The ledger's item refs of late fees: an invoice whose lines are all these is a late-fee invoice."""
    collection_fee_items: tuple[str, ...] = ()
    """The ledger's item refs of collection fees: an invoice whose lines are all these is a collection-fee
    invoice."""
    late_fee_item: str | None = None
    """QuickBooks: the Item (its Id) a late fee's line is on, whether added to the overdue invoice or on a
    late-fee invoice of its own (required to book late fees; Xero does not use it). It counts as one of
    ``late_fee_items``."""
    late_fee_account: str | None = None
    """Xero: the revenue account code of a late fee's line (required to book late fees there)."""
    collections_fee_account: str | None = None
    """The expense account a collections agency's fee is booked to (a QuickBooks account Id, a Xero code)."""
    collections_vendor: str | None = None
    """QuickBooks: the Vendor (its Id) of the collections agency, whose bill the fee is (Xero finds or makes
    the agency's contact by name)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuickBooksConnectionConfig:
    name: str
    tenant: str
    client_id: Secret
    client_secret: Secret
    redirect_uri: str
    kind: Literal["quickbooks"] = "quickbooks"
    realm_id: str | None = None
    environment: Literal["production", "sandbox"] = "production"
    base_url: str | None = None
    token_url: str | None = None
    discovery_url: str | None = None
    sync_interval_minutes: int = 15
    entities: tuple[str, ...] = ENTITIES
    overlap_seconds: int = 300
    delete_guard_ratio: float = 0.5
    minor_version: int = 75
    timeout_seconds: float = 60.0
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    writeback: WritebackConfig | None = None
    """None: nothing is written to this ledger."""

    @property
    def api_base(self) -> str:
        """API root including ``/v3`` (the override, else Intuit's for the environment)."""
        return self.base_url or QUICKBOOKS_API_BASE[self.environment]

    @property
    def discovery(self) -> str:
        """What intuit-oauth's ``AuthClient`` takes as ``environment``.

        Either the discovery document URL override, or ``"production"`` /
        ``"sandbox"``, which the library maps to Intuit's own documents.
        """
        return self.discovery_url or self.environment

    @property
    def token_endpoint(self) -> str:
        """OAuth token endpoint (the override, else Intuit's)."""
        return self.token_url or QUICKBOOKS_TOKEN_URL


@dataclass(frozen=True, slots=True, kw_only=True)
class XeroRateLimitConfig:
    """Per-connection request budget; the defaults are Xero's published limits.

    ``per_minute``, ``per_day`` and ``concurrent`` apply per organisation (tenant);
    ``app_per_minute`` is shared by every organisation the app is connected to.
    """

    per_minute: int = 60
    per_day: int = 5000
    concurrent: int = 5
    app_per_minute: int = 10000


@dataclass(frozen=True, slots=True, kw_only=True)
class XeroConnectionConfig:
    name: str
    tenant: str
    client_id: Secret
    client_secret: Secret
    redirect_uri: str
    kind: Literal["xero"] = "xero"
    # The organisation's tenantId (a lower-case UUID); None until `arsync connect` picks it.
    xero_tenant_id: str | None = None
    scopes: tuple[str, ...] = XERO_SCOPES
    base_url: str | None = None
    identity_url: str | None = None
    token_url: str | None = None
    authorize_url: str | None = None
    sync_interval_minutes: int = 15
    entities: tuple[str, ...] = ENTITIES
    overlap_seconds: int = 300
    delete_guard_ratio: float = 0.5
    timeout_seconds: float = 60.0
    page_size: int = XERO_MAX_PAGE_SIZE
    rate_limit: XeroRateLimitConfig = field(default_factory=XeroRateLimitConfig)
    writeback: WritebackConfig | None = None
    """None: nothing is written to this ledger."""

    @property
    def api_base(self) -> str:
        """Accounting API root including ``/api.xro/2.0`` (the override, else Xero's)."""
        return self.base_url or XERO_API_BASE

    @property
    def identity_base(self) -> str:
        """Root of the endpoint that lists authorised organisations (``/connections``)."""
        return self.identity_url or XERO_IDENTITY_BASE

    @property
    def token_endpoint(self) -> str:
        """OAuth token endpoint (the override, else Xero's)."""
        return self.token_url or XERO_TOKEN_URL

    @property
    def authorize_endpoint(self) -> str:
        """OAuth authorisation (consent) endpoint (the override, else Xero's)."""
        return self.authorize_url or XERO_AUTHORIZE_URL


ConnectionConfig: TypeAlias = QuickBooksConnectionConfig | XeroConnectionConfig
"""Any configured connection; tell them apart by ``kind`` (or ``isinstance``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentsConfig:
    """A tenant's payment processor (``[tenants.T.payments]``) and its auto-pay policy."""

    processor: Processor = "stripe"
    api_key: Secret
    base_url: str = STRIPE_API_BASE
    """API root without a trailing slash (Stripe's, or a local emulator's in tests)."""
    timeout_seconds: float = STRIPE_TIMEOUT_SECONDS
    success_url: str
    """Where Checkout sends the customer back after paying or saving a method."""
    cancel_url: str
    """Where Checkout sends the customer back when they give up."""
    charge_hour: int = DEFAULT_CHARGE_HOUR
    """The daemon's daily auto-pay run starts at this hour, in the tenant's time zone."""
    follow_interval_minutes: int = DEFAULT_FOLLOW_MINUTES
    """Minutes between two reads of the processor's events (settlements, refunds, disputes, payouts)."""
    autopay: AutopayPolicy = field(default_factory=AutopayPolicy)
    """Rules, retry days, surcharge, credits first, excluded tags (no rules: nothing is auto-charged)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantConfig:
    name: str
    display_name: str
    timezone: str
    home_currency: str
    connections: tuple[ConnectionConfig, ...] = ()
    payments: PaymentsConfig | None = None
    """None: the tenant takes no payments through a processor and nothing is auto-charged."""
    dunning: DunningConfig | None = None
    """None: no reminders, fees or escalations (``[tenants.T.dunning]``, see :mod:`arsync.config_dunning`)."""

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DatabaseConfig:
    """SQLAlchemy URL; relative SQLite paths are already made absolute."""

    url: str

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by ``***`` (safe for logs)."""
        return _redact_url(self.url)

    def __repr__(self) -> str:
        return f"DatabaseConfig(url={self.redacted_url!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    log_format: Literal["json", "text"] = "json"
    shutdown_grace_seconds: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    path: Path | None
    database: DatabaseConfig
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    tenants: tuple[TenantConfig, ...] = ()

    def connections(self) -> tuple[ConnectionConfig, ...]:
        """Every connection of every tenant, in file order."""
        return tuple(conn for tenant in self.tenants for conn in tenant.connections)

    def connection(self, name: str) -> ConnectionConfig:
        for conn in self.connections():
            if conn.name == name:
                return conn
        known = [conn.name for conn in self.connections()]
        where = f" in {self.path}" if self.path else ""
        if not known:
            raise UnknownConnectionError(f"no connection named {name!r}: none is configured{where}")
        hint = _did_you_mean(name, known)
        raise UnknownConnectionError(
            f"no connection named {name!r}{where}{hint}; known connections: {', '.join(known)}"
        )

    def tenant(self, name: str) -> TenantConfig:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        known = [tenant.name for tenant in self.tenants]
        hint = _did_you_mean(name, known)
        listing = ", ".join(known) if known else "(none)"
        raise KeyError(f"no tenant named {name!r}{hint}; known tenants: {listing}")


# --------------------------------------------------------------------------- file shape


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(
            "must be the NAME of an environment variable (upper-case letters, digits and"
            " underscores, e.g. ARSYNC_ACME_QBO_CLIENT_SECRET), not the value itself"
        )
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        shown = "" if "@" in value else f" (got {value!r})"
        raise ValueError(f"must be an http:// or https:// URL with a host{shown}")
    if parts.password is not None:
        raise ValueError("must not contain a password; put secrets in environment variables")
    return value


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _check_currency(value: str) -> str:
    if not _CURRENCY_RE.fullmatch(value):
        upper = value.upper()
        hint = f" (did you mean {upper!r}?)" if _CURRENCY_RE.fullmatch(upper) else ""
        raise ValueError(f"must be a 3-letter upper-case ISO 4217 code such as 'USD'; got {value!r}{hint}")
    return value


def _to_decimal(value: object) -> Decimal:
    """Money and percentages: a string ("12.50") or an integer, never a float."""
    if isinstance(value, str):
        if not _DECIMAL_RE.fullmatch(value.strip()):
            raise ValueError(f'must be a decimal number such as "12.50" (got {value!r})')
        return Decimal(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        raise ValueError(
            f"must be a string or an integer, not a float (floats are inexact for money):"
            f' write {value!r} as "{value!r}"'
        )
    raise ValueError(f'must be a string such as "12.50" or an integer, not {_describe(value)}')


_T = TypeVar("_T")


def _check_unique(value: list[_T]) -> list[_T]:
    twice = sorted({str(item) for item in value if value.count(item) > 1})
    if twice:
        raise ValueError(f"lists {', '.join(twice)} more than once")
    return value


_EnvName = Annotated[str, AfterValidator(_check_env_name)]
_HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
_NonBlank = Annotated[str, AfterValidator(_check_not_blank)]
_Currency = Annotated[str, AfterValidator(_check_currency)]
# Amounts and percentages: Decimal from a string or an integer, never negative.
_Money = Annotated[Decimal, BeforeValidator(_to_decimal), Field(ge=0)]
_Percent = Annotated[Decimal, BeforeValidator(_to_decimal), Field(ge=0, le=100)]
_MethodType = Literal["card", "us_bank_account"]
_Exemption = Literal["us_bank_account", "card", "debit", "credit", "prepaid"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class _RawFile(_Section):
    """Top level; each section is validated by its own model below."""

    database: object = None
    daemon: object = None
    credentials: object = None
    tenants: object = None


class _RawDatabase(_Section):
    url: str | None = None
    url_env: _EnvName | None = None


class _RawDaemon(_Section):
    log_format: Literal["json", "text"] = "json"
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)


class _RawCredentials(_Section):
    file: _NonBlank | None = None


class _RawTenant(_Section):
    display_name: _NonBlank | None = None
    timezone: str
    home_currency: str
    connections: dict[str, object] = Field(default_factory=dict)
    # validated by _Loader.payments, which also resolves its API key
    payments: object = None
    # validated by _Loader.dunning (arsync.config_dunning), which also resolves its secrets
    dunning: object = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            hint = _did_you_mean(value, _time_zones())
            raise ValueError(f"unknown time zone {value!r}{hint}; use an IANA name such as 'America/Chicago'") from None
        return value

    @field_validator("home_currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return _check_currency(value)


class _RawRateLimit(_Section):
    per_second: int = Field(default=10, ge=1)
    per_minute: int = Field(default=500, ge=1)
    concurrent: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> _RawRateLimit:
        if self.per_minute < self.per_second:
            raise ValueError(f"per_minute ({self.per_minute}) must be at least per_second ({self.per_second})")
        return self


class _RawXeroRateLimit(_Section):
    per_minute: int = Field(default=60, ge=1)
    per_day: int = Field(default=5000, ge=1)
    concurrent: int = Field(default=5, ge=1)
    app_per_minute: int = Field(default=10000, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> _RawXeroRateLimit:
        if self.per_day < self.per_minute:
            raise ValueError(f"per_day ({self.per_day}) must be at least per_minute ({self.per_minute})")
        if self.app_per_minute < self.per_minute:
            raise ValueError(f"app_per_minute ({self.app_per_minute}) must be at least per_minute ({self.per_minute})")
        return self


def _check_scope(value: str) -> str:
    if not _SCOPE_RE.fullmatch(value):
        parts = value.split()
        if len(parts) > 1 and all(_SCOPE_RE.fullmatch(part) for part in parts):
            listed = ", ".join(f'"{part}"' for part in parts)
            raise ValueError(f"must hold one scope per array item, e.g. scopes = [{listed}]")
        raise ValueError(f"is not an OAuth scope name such as 'accounting.transactions' (got {value!r})")
    return value


_Scope = Annotated[str, AfterValidator(_check_scope)]


class _RawWriteback(_Section):
    clearing_account: _NonBlank
    bank_account: _NonBlank
    fee_account: _NonBlank
    surcharge_account: _NonBlank | None = None
    refund_account: _NonBlank | None = None
    refund_item: _NonBlank | None = None
    allocation_order: list[Literal["collection_fees", "late_fees", "principal"]] | None = None
    late_fee_items: list[_NonBlank] = Field(default_factory=list)
    collection_fee_items: list[_NonBlank] = Field(default_factory=list)
    late_fee_item: _NonBlank | None = None
    late_fee_account: _NonBlank | None = None
    collections_fee_account: _NonBlank | None = None
    collections_vendor: _NonBlank | None = None

    @field_validator("late_fee_item")
    @classmethod
    def _late_fee_item_is_no_collection_fee(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value in (info.data.get("collection_fee_items") or ()):
            raise ValueError(f"{value} is also in collection_fee_items: the late fee item is a late fee")
        return value

    @field_validator("allocation_order")
    @classmethod
    def _each_class_once(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        twice = sorted({c for c in value if value.count(c) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once: each class comes once")
        missing = [c for c in ALLOCATION_CLASSES if c not in value]
        if missing:
            raise ValueError(f"must list each of {', '.join(ALLOCATION_CLASSES)} once (missing: {', '.join(missing)})")
        return value

    @field_validator("collection_fee_items")
    @classmethod
    def _one_kind_of_fee(cls, value: list[str], info: ValidationInfo) -> list[str]:
        late = set(info.data.get("late_fee_items") or ())
        both = sorted(late & set(value))
        if both:
            raise ValueError(f"{', '.join(both)} also in late_fee_items: an item is one kind of fee")
        return value


class _RawConnection(_Section):
    """Keys every connection kind has; each kind's model adds its own."""

    kind: str
    client_id: _NonBlank | None = None
    client_id_env: _EnvName | None = None
    # Refused when present (see _Loader._connection); typed ``object`` so that its
    # value is never validated and so can never appear in an error message.
    client_secret: object = None
    client_secret_env: _EnvName | None = None
    redirect_uri: _HttpUrl
    base_url: _HttpUrl | None = None
    token_url: _HttpUrl | None = None
    sync_interval_minutes: int = Field(default=15, ge=1)
    entities: list[Entity] = Field(default_factory=lambda: list(ENTITIES), min_length=1)
    overlap_seconds: int = Field(default=300, ge=0)
    delete_guard_ratio: float = Field(default=0.5, ge=0, le=1)
    timeout_seconds: float = Field(default=60.0, gt=0)
    writeback: _RawWriteback | None = None

    @field_validator("entities")
    @classmethod
    def _unique(cls, value: list[Entity]) -> list[Entity]:
        twice = sorted({e for e in value if value.count(e) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once")
        return value


class _RawQuickBooks(_RawConnection):
    kind: Literal["quickbooks"]
    realm_id: str | None = None
    environment: Literal["production", "sandbox"] = "production"
    discovery_url: _HttpUrl | None = None
    minor_version: int = Field(default=75, ge=1)
    rate_limit: _RawRateLimit = Field(default_factory=_RawRateLimit)

    @field_validator("realm_id")
    @classmethod
    def _realm(cls, value: str | None) -> str | None:
        if value is not None and not value.isdigit():
            raise ValueError(f"must be the QuickBooks company ID, digits only (got {value!r})")
        return value


class _RawXero(_RawConnection):
    kind: Literal["xero"]
    xero_tenant_id: str | None = None
    scopes: list[_Scope] = Field(default_factory=lambda: list(XERO_SCOPES), min_length=1)
    identity_url: _HttpUrl | None = None
    authorize_url: _HttpUrl | None = None
    page_size: int = Field(default=XERO_MAX_PAGE_SIZE, ge=1, le=XERO_MAX_PAGE_SIZE)
    rate_limit: _RawXeroRateLimit = Field(default_factory=_RawXeroRateLimit)

    @field_validator("xero_tenant_id")
    @classmethod
    def _tenant_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _UUID_RE.fullmatch(value):
            raise ValueError(
                "must be the organisation's Xero tenantId, a UUID such as"
                f" '4a1d3f6e-8c2b-4e5f-9a7d-1b2c3d4e5f60' (got {value!r}); leave it out until"
                " `arsync connect` has picked the organisation"
            )
        return value.lower()

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        twice = sorted({s for s in value if value.count(s) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once")
        if "offline_access" not in value:
            raise ValueError("must include 'offline_access' (without it Xero issues no refresh token)")
        return value


_KIND_MODELS: Final[dict[str, type[_RawQuickBooks] | type[_RawXero]]] = {
    "quickbooks": _RawQuickBooks,
    "xero": _RawXero,
}


class _KindKeys(NamedTuple):
    """For a model that exists once per kind: its kind, the other kind's model, and
    which of the other kind's keys has an equivalent here (for did-you-mean)."""

    kind: str
    other_kind: str
    other: type[BaseModel]
    counterparts: Mapping[str, str]


_KIND_KEYS: Final[dict[type[BaseModel], _KindKeys]] = {
    _RawQuickBooks: _KindKeys(
        "quickbooks", "xero", _RawXero, {"xero_tenant_id": "realm_id", "authorize_url": "discovery_url"}
    ),
    _RawXero: _KindKeys(
        "xero", "quickbooks", _RawQuickBooks, {"realm_id": "xero_tenant_id", "discovery_url": "authorize_url"}
    ),
    _RawRateLimit: _KindKeys("quickbooks", "xero", _RawXeroRateLimit, {}),
    _RawXeroRateLimit: _KindKeys("xero", "quickbooks", _RawRateLimit, {"per_second": "per_minute"}),
}


_Tags = Annotated[list[_NonBlank], AfterValidator(_check_unique)]


class _RawSurcharge(_Section):
    percent: _Percent = Decimal(0)
    fixed: _Money = Decimal(0)
    max_percent: _Percent
    exempt: Annotated[list[_Exemption], AfterValidator(_check_unique)] | None = None
    description: _NonBlank = "Card processing surcharge"


class _RawRule(_Section):
    name: _NonBlank
    days_after_issue: int | None = Field(default=None, ge=0)
    on_due_date: bool = False
    agreement_only: bool = False
    min_amount: _Money | None = None
    max_amount: _Money | None = None
    currencies: Annotated[list[_Currency], AfterValidator(_check_unique)] = Field(default_factory=list)
    tags_any: _Tags = Field(default_factory=list)
    tags_none: _Tags = Field(default_factory=list)
    method_types: Annotated[list[_MethodType], AfterValidator(_check_unique)] = Field(default_factory=list)

    @field_validator("max_amount")
    @classmethod
    def _not_below_min(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        low = info.data.get("min_amount")
        if value is not None and low is not None and value < low:
            raise ValueError(f"must be at least min_amount ({low}); got {value}")
        return value

    @field_validator("tags_none")
    @classmethod
    def _not_also_required(cls, value: list[str], info: ValidationInfo) -> list[str]:
        both = sorted(set(value) & set(info.data.get("tags_any", ())))
        if both:
            listed = ", ".join(repr(tag) for tag in both)
            raise ValueError(f"lists {listed}, which tags_any requires; a tag cannot be both required and excluded")
        return value

    @model_validator(mode="after")
    def _timing(self) -> _RawRule:
        if self.days_after_issue is None and not self.on_due_date:
            raise ValueError(
                "says nothing about when to charge: set days_after_issue (0 = from the invoice date)"
                " or on_due_date = true"
            )
        return self


class _RawPayments(_Section):
    processor: Processor = "stripe"
    # Refused when present (see _Loader.payments); typed ``object`` so that its value
    # is never validated and so can never appear in an error message.
    api_key: object = None
    api_key_env: _EnvName | None = None
    base_url: _HttpUrl = STRIPE_API_BASE
    timeout_seconds: float = Field(default=STRIPE_TIMEOUT_SECONDS, gt=0)
    success_url: _HttpUrl
    cancel_url: _HttpUrl
    retry_days: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: list(DEFAULT_RETRY_DAYS))
    charge_hour: int = Field(default=DEFAULT_CHARGE_HOUR, ge=0, le=23)
    follow_interval_minutes: int = Field(default=DEFAULT_FOLLOW_MINUTES, ge=1, le=1440)
    apply_credits: bool = True
    excluded_tags: _Tags = Field(default_factory=list)
    surcharge: _RawSurcharge | None = None
    # Duplicate names are reported by _Loader.payments, at the second one's name.
    rules: list[_RawRule] = Field(default_factory=list)

    @field_validator("retry_days")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(later <= earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError(
                f"must be strictly increasing: days after the first soft decline, such as [1, 3, 7] (got {value})"
            )
        return value


class _RawCredentialEntry(_Section):
    client_id: _NonBlank | None = None
    client_secret: _NonBlank | None = None


class _RawPaymentsCredential(_Section):
    api_key: _NonBlank | None = None


class _RawDunningCredential(_Section):
    smtp_password: _NonBlank | None = None
    sms_auth_token: _NonBlank | None = None
    suspension_secret: _NonBlank | None = None
    agency_secret: _NonBlank | None = None


class _RawCredentialsFile(_Section):
    connections: dict[str, _RawCredentialEntry] = Field(default_factory=dict)
    payments: dict[str, _RawPaymentsCredential] = Field(default_factory=dict)
    dunning: dict[str, _RawDunningCredential] = Field(default_factory=dict)


# --------------------------------------------------------------------------- messages

_M = TypeVar("_M", bound=BaseModel)
_Loc = tuple[str | int, ...]

_EXPECTED: Final = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


_BOUNDS: Final = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _describe(value: object) -> str:
    """The TOML type of a value, never the value itself."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    return type(value).__name__


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@functools.cache
def _time_zones() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
        out = f"{out}.{text}" if out else text
    return out


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the table at ``loc`` inside ``model``."""
    current: Any = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = info.annotation
        while True:
            origin = typing.get_origin(current)
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if origin in (typing.Union, types.UnionType) and len(args) == 1:
                current = args[0]
            elif origin in (dict, list) and parts and args:
                parts.pop(0)
                current = args[-1]
            else:
                break
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unknown_key(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    key = str(loc[-1])
    parent = _model_at(model, loc[:-1])
    known = list(parent.model_fields) if parent else []
    kinds = _KIND_KEYS.get(parent) if parent else None
    text = f"unknown key {key!r}"
    if kinds is not None:
        text += f" for a {kinds.kind!r} connection"
        if key in kinds.other.model_fields:
            text += f" (it applies only to {kinds.other_kind!r} connections"
            counterpart = kinds.counterparts.get(key)
            if counterpart is not None:
                return f"{text}; did you mean {counterpart!r}?)"
            return f"{text}); known keys: {', '.join(known)}"
    hint = _did_you_mean(key, known)
    if hint:
        return f"{text}{hint}"
    if known:
        return f"{text}; known keys: {', '.join(known)}"
    return text


def _message(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    loc: Sequence[str | int] = error["loc"]
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        return _unknown_key(model, loc)
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind in _EXPECTED:
        text = f"must be {_EXPECTED[kind]}, not {_describe(value)}"
        if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
            text += " (put the value in double quotes)"
        return text
    if kind == "literal_error":
        return f"must be {ctx.get('expected', '?')} (got {value!r})"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    msg: str = error.get("msg", kind)
    msg = msg.replace("Input should be", "must be")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number or (isinstance(value, str) and kind in _BOUNDS):  # a bound on a decimal written as a string
        msg += f" (got {value!r})"
    return msg


_AT_RE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END_RE: Final = re.compile(r"\s*\(at end of document\)\s*$")
_HEADER_RE: Final = re.compile(r"^\s*\[\[?\s*([^\[\]#]*?)\s*\]?\]?\s*(?:#.*)?$")
_ASSIGN_RE: Final = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


def _split_key(text: str) -> list[str]:
    return [piece.strip("\"'") for piece in re.findall(r"\"[^\"]*\"|'[^']*'|[^.\s]+", text)]


def _key_at_line(lines: Sequence[str], line: int) -> str:
    """Best guess of the dotted key written on ``line`` (1-based)."""
    table: list[str] = []
    for text in lines[: max(line - 1, 0)]:
        if text.lstrip().startswith("["):
            match = _HEADER_RE.match(text)
            if match:
                table = _split_key(match.group(1))
    current = lines[line - 1] if 0 < line <= len(lines) else ""
    if current.lstrip().startswith("["):
        match = _HEADER_RE.match(current)
        return _dotted(_split_key(match.group(1))) if match else _dotted(table)
    assign = _ASSIGN_RE.match(current)
    if assign:
        return _dotted([*table, *_split_key(assign.group(1))])
    return _dotted(table)


def _syntax_problem(file: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    raw = str(exc)
    lines = text.splitlines()
    at = _AT_RE.search(raw)
    if at:
        line = int(at.group(1))
        reason = raw[: at.start()]
        column = int(at.group(2))
        where = f"line {line}, column {column}"
        text_line = lines[line - 1] if 0 < line <= len(lines) else ""
        bare_word = 0 < column <= len(text_line) and text_line[column - 1].isalpha()
    else:
        end = _AT_END_RE.search(raw)
        reason = raw[: end.start()] if end else raw
        line = len(lines)
        while line > 1 and not lines[line - 1].strip():
            line -= 1
        where = f"the end of the file (line {line})"
        bare_word = False
    reason = reason[:1].lower() + reason[1:]
    if bare_word and reason.startswith("invalid value"):
        reason += ' (text must be in double quotes, e.g. name = "value")'
    return ConfigProblem(file, _key_at_line(lines, line), f"TOML syntax error at {where}: {reason}")


# --------------------------------------------------------------------------- database URL

_DB_DRIVERS: Final = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


def _redact_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"


def _database_url(raw: str, base: Path) -> str:
    """Normalize a database URL; raise ValueError with a message safe to print."""
    try:
        url: URL = make_url(raw)
    except (ArgumentError, ValueError):
        raise ValueError(
            "is not a database URL; expected e.g. sqlite:///arsync.db or postgresql+psycopg://user@host:5432/dbname"
        ) from None
    if url.drivername not in _DB_DRIVERS:
        raise ValueError(
            f"unsupported database {url.drivername!r}; use sqlite:///path/to/file.db or"
            " postgresql+psycopg://user@host:5432/dbname"
        )
    if url.drivername == "postgresql":  # psycopg 3 is the installed driver, not psycopg2
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        name = url.database
        if name and name != ":memory:" and not name.startswith("file:"):
            path = Path(name).expanduser()
            if not path.is_absolute():
                path = base / path
            url = url.set(database=str(path))
    elif not url.database or not url.host:
        raise ValueError("must name a host and a database, e.g. postgresql+psycopg://arsync@db.internal:5432/arsync")
    return url.render_as_string(hide_password=False)


# --------------------------------------------------------------------------- loader


class _Loader:
    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path.expanduser().absolute()
        self.file = str(self.path)
        self.folder = self.path.parent
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        # credentials file state: None = not configured
        self.credentials_file: str | None = None
        # None until a readable file is parsed; an entry is None when it is invalid
        self.credentials: dict[str, _RawCredentialEntry | None] | None = None
        # the file's [payments.TENANT] entries, likewise
        self.payment_credentials: dict[str, _RawPaymentsCredential | None] = {}
        # tenants with a [tenants.T.payments] table, for the file's unused entries
        self.payment_tenants: set[str] = set()
        # the file's [dunning.TENANT] entries, and the tables each tenant's dunning section has
        self.dunning_credentials: dict[str, _RawDunningCredential | None] = {}
        self.dunning_tables: dict[str, frozenset[str]] = {}

    def problem(self, key: Sequence[str | int], message: str, file: str | None = None) -> None:
        self.problems.append(ConfigProblem(file or self.file, _dotted(key), message))

    def validate(self, model: type[_M], data: object, prefix: _Loc, file: str | None = None) -> _M | None:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        for error in errors:
            self.problem((*prefix, *error["loc"]), _message(error, model), file)
        return None

    def read_toml(self, path: Path, file: str, missing_key: _Loc) -> dict[str, Any] | None:
        """Parse ``path``; a file that cannot be read is reported at ``missing_key``
        of the config file (or at the file itself when ``missing_key`` is empty)."""
        where = self.file if missing_key else file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.problem(missing_key, f"file not found: {path}", where)
            return None
        except IsADirectoryError:
            self.problem(missing_key, f"is a directory, not a file: {path}", where)
            return None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            self.problem(missing_key, f"cannot read {path}: {reason}", where)
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem((), f"not UTF-8 text (bad byte at offset {exc.start})", file)
            return None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.problems.append(_syntax_problem(file, text, exc))
            return None

    def load(self) -> Config:
        doc = self.read_toml(self.path, self.file, ())
        if doc is None:
            raise ConfigError(self.problems)
        self.validate(_RawFile, doc, ())
        database = self.database(doc.get("database", {}))
        daemon = self.validate(_RawDaemon, doc.get("daemon", {}), ("daemon",))
        self.load_credentials(doc.get("credentials", {}))
        tenants = self.tenants(doc.get("tenants", {}))
        if self.problems or database is None or daemon is None:
            raise ConfigError(self.problems)
        return Config(
            path=self.path,
            database=database,
            daemon=DaemonConfig(
                log_format=daemon.log_format,
                shutdown_grace_seconds=daemon.shutdown_grace_seconds,
            ),
            tenants=tenants,
        )

    def database(self, data: object) -> DatabaseConfig | None:
        raw = self.validate(_RawDatabase, data, ("database",))
        if raw is None:
            return None
        key: _Loc = ("database", "url")
        url = raw.url
        if raw.url_env is not None:
            from_env = self.environ.get(raw.url_env, "").strip()
            if from_env:
                key, url = ("database", "url_env"), from_env
            elif url is None:
                self.problem(("database", "url_env"), f"environment variable {raw.url_env} is not set")
                return None
        try:
            resolved = _database_url(url or DEFAULT_DATABASE_URL, self.folder)
        except ValueError as exc:
            origin = f"environment variable {raw.url_env}: " if key[-1] == "url_env" else ""
            self.problem(key, f"{origin}{exc}")
            return None
        return DatabaseConfig(url=resolved)

    def load_credentials(self, data: object) -> None:
        raw = self.validate(_RawCredentials, data, ("credentials",))
        if raw is None or raw.file is None:
            return
        path = Path(raw.file).expanduser()
        if not path.is_absolute():
            path = self.folder / path
        self.credentials_file = str(path)
        doc = self.read_toml(path, str(path), ("credentials", "file"))
        if doc is None:
            return
        self.credentials = {}
        entries = doc.get("connections", {})
        payments = doc.get("payments", {})
        dunning = doc.get("dunning", {})
        top = {key: value for key, value in doc.items() if key not in ("connections", "payments", "dunning")}
        self.validate(_RawCredentialsFile, top, (), file=str(path))
        if isinstance(dunning, dict):
            for tenant, body in dunning.items():
                self.dunning_credentials[tenant] = self.validate(
                    _RawDunningCredential, body, ("dunning", tenant), str(path)
                )
        else:
            self.problem(("dunning",), f"must be a table, not {_describe(dunning)}", str(path))
        if isinstance(payments, dict):
            for tenant, body in payments.items():
                # as for connections: a broken entry is reported here, once
                self.payment_credentials[tenant] = self.validate(
                    _RawPaymentsCredential, body, ("payments", tenant), str(path)
                )
        else:
            self.problem(("payments",), f"must be a table, not {_describe(payments)}", str(path))
        if not isinstance(entries, dict):
            self.problem(("connections",), f"must be a table, not {_describe(entries)}", str(path))
            return
        for name, body in entries.items():
            entry = self.validate(_RawCredentialEntry, body, ("connections", name), str(path))
            # a broken entry is reported once, here; its connection then stays quiet
            self.credentials[name] = entry

    def tenants(self, data: object) -> tuple[TenantConfig, ...]:
        if not isinstance(data, dict):
            self.problem(("tenants",), f"must be a table of tenants, not {_describe(data)}")
            return ()
        owners: dict[str, str] = {}
        out: list[TenantConfig] = []
        for name, body in data.items():
            tenant = self.tenant(name, body, owners)
            if tenant is not None:
                out.append(tenant)
        self.unused_credentials(owners)
        self.unused_payment_credentials(list(data))
        if self.dunning_credentials:
            from arsync.config_dunning import unused_dunning_credentials

            unused_dunning_credentials(self, list(data))
        return tuple(out)

    def tenant(self, name: str, body: object, owners: dict[str, str]) -> TenantConfig | None:
        prefix: _Loc = ("tenants", name)
        ok = True
        if not _NAME_RE.fullmatch(name):
            ok = False
            self.problem(
                prefix,
                "tenant names may use only lower-case letters, digits, '-' and '_', starting with a letter or digit",
            )
        raw = self.validate(_RawTenant, body, prefix)
        connections: list[ConnectionConfig] = []
        conns = body.get("connections", {}) if isinstance(body, dict) else {}
        if isinstance(conns, dict):
            for conn_name, conn_body in conns.items():
                conn = self.connection(name, conn_name, conn_body, owners)
                ok = ok and conn is not None
                if conn is not None:
                    connections.append(conn)
        payments: PaymentsConfig | None = None
        if isinstance(body, dict) and "payments" in body:
            payments = self.payments(name, body["payments"])
            ok = ok and payments is not None
        dunning: DunningConfig | None = None
        if isinstance(body, dict) and "dunning" in body:
            dunning = self.dunning(name, raw.display_name if raw and raw.display_name else name, body["dunning"])
            ok = ok and dunning is not None
        if raw is None or not ok:
            return None
        return TenantConfig(
            name=name,
            display_name=raw.display_name or name,
            timezone=raw.timezone,
            home_currency=raw.home_currency,
            connections=tuple(connections),
            payments=payments,
            dunning=dunning,
        )

    def connection(self, tenant: str, name: str, body: object, owners: dict[str, str]) -> ConnectionConfig | None:
        prefix: _Loc = ("tenants", tenant, "connections", name)
        ok = True
        if not _NAME_RE.fullmatch(name):
            ok = False
            self.problem(
                prefix,
                "connection names may use only lower-case letters, digits, '-' and '_',"
                " starting with a letter or digit",
            )
        if name in owners:
            ok = False
            self.problem(
                prefix,
                f"connection name {name!r} is already used by tenant {owners[name]!r}"
                f" ({_dotted(('tenants', owners[name], 'connections', name))});"
                " connection names must be unique across all tenants",
            )
        else:
            owners[name] = tenant
        if not isinstance(body, dict):
            self.problem(prefix, f"must be a table, not {_describe(body)}")
            return None
        kinds = ", ".join(KNOWN_KINDS)
        kind = body.get("kind")
        if "kind" not in body:
            self.problem((*prefix, "kind"), f"missing required key; known kinds: {kinds}")
            return None
        if not isinstance(kind, str) or kind not in _KIND_MODELS:
            shown = repr(kind) if isinstance(kind, str) else _describe(kind)
            hint = _did_you_mean(kind, KNOWN_KINDS) if isinstance(kind, str) else ""
            self.problem((*prefix, "kind"), f"unknown connection kind {shown}{hint}; known kinds: {kinds}")
            return None

        if "client_secret" in body:
            ok = False
            self.problem(
                (*prefix, "client_secret"),
                "secrets may not be written in the config file; put secrets in an environment"
                ' variable or the credentials file (client_secret_env = "VARIABLE_NAME" here,'
                f" or client_secret under [connections.{name}] in the [credentials] file)",
            )
        client_id = self.secret(body, "client_id", prefix, name)
        client_secret = self.secret(body, "client_secret", prefix, name)
        raw = self.validate(_KIND_MODELS[kind], body, prefix)
        if raw is None or client_id is None or client_secret is None or not ok:
            return None
        if isinstance(raw, _RawXero):
            return _xero_connection(raw, name=name, tenant=tenant, client_id=client_id, client_secret=client_secret)
        return _quickbooks_connection(raw, name=name, tenant=tenant, client_id=client_id, client_secret=client_secret)

    def secret(
        self,
        body: Mapping[str, object],
        which: Literal["client_id", "client_secret"],
        prefix: _Loc,
        name: str,
    ) -> Secret | None:
        """Resolve ``which`` from its env var, inline (client_id only) or the credentials file.

        Malformed values are left to the model's validation, which reports them.
        """
        env_key = f"{which}_env"
        env_name = body.get(env_key)
        inline = body.get(which)
        if env_name is not None:
            if not (isinstance(env_name, str) and _ENV_NAME_RE.fullmatch(env_name)):
                return None
            if which == "client_id" and inline is not None:
                self.problem((*prefix, env_key), f"give either {which} or {env_key}, not both")
                return None
            return self.from_env((*prefix, env_key), env_name)
        if inline is not None:
            # client_id inline is fine (validated by the model); client_secret was refused.
            if which == "client_id" and isinstance(inline, str) and inline.strip():
                return Secret(inline.strip())
            return None
        if self.credentials_file is None:
            self.problem(
                (*prefix, which),
                f"no {which}: set {env_key} to the name of an environment variable that holds"
                f" it, or name a credentials file ([credentials] file = ...) and put it under"
                f" [connections.{name}] there",
            )
            return None
        if self.credentials is None:  # the file itself is broken; already reported
            return None
        if name in self.credentials and self.credentials[name] is None:
            return None  # the entry is invalid; already reported
        entry = self.credentials.get(name)
        value = getattr(entry, which) if entry is not None else None
        if value is None:
            self.problem(
                ("connections", name, which),
                f"missing: connection {name!r} has no {env_key} in {self.file},"
                f" so its {which} must be given here under [connections.{name}]",
                file=self.credentials_file,
            )
            return None
        return Secret(value.strip())

    def from_env(self, key: _Loc, env_name: str) -> Secret | None:
        """The stripped value of ``env_name``; a problem at ``key`` when it is unset or empty."""
        value = self.environ.get(env_name)
        if value is None:
            self.problem(key, f"environment variable {env_name} is not set")
            return None
        if not value.strip():
            self.problem(key, f"environment variable {env_name} is empty")
            return None
        return Secret(value.strip())

    def payments(self, tenant: str, body: object) -> PaymentsConfig | None:
        """``[tenants.T.payments]``: the processor, its API key, and the auto-pay policy."""
        prefix: _Loc = ("tenants", tenant, "payments")
        if not isinstance(body, dict):
            self.problem(prefix, f"must be a table, not {_describe(body)}")
            return None
        self.payment_tenants.add(tenant)
        ok = True
        if "api_key" in body:
            ok = False
            self.problem(
                (*prefix, "api_key"),
                "secrets may not be written in the config file; put secrets in an environment"
                ' variable or the credentials file (api_key_env = "VARIABLE_NAME" here,'
                f" or api_key under [payments.{tenant}] in the [credentials] file)",
            )
        api_key = self.payments_key(body, prefix, tenant)
        ok = self.unique_rule_names(body.get("rules"), prefix) and ok
        raw = self.validate(_RawPayments, body, prefix)
        if raw is None or api_key is None or not ok:
            return None
        return _payments_config(raw, api_key)

    def dunning(self, tenant: str, display_name: str, body: object) -> DunningConfig | None:
        """``[tenants.T.dunning]``: policies, sending and escalation (read by :mod:`arsync.config_dunning`)."""
        from arsync.config_dunning import read_dunning

        return read_dunning(self, tenant, display_name, body)

    def payments_key(self, body: Mapping[str, object], prefix: _Loc, tenant: str) -> Secret | None:
        """The processor API key, from ``api_key_env`` or the credentials file (mirrors :meth:`secret`)."""
        env_name = body.get("api_key_env")
        if env_name is not None:
            if not (isinstance(env_name, str) and _ENV_NAME_RE.fullmatch(env_name)):
                return None  # the model reports it
            key = self.from_env((*prefix, "api_key_env"), env_name)
            return self.usable_key(key, (*prefix, "api_key_env"), f"environment variable {env_name}")
        if "api_key" in body:
            return None  # refused above
        if self.credentials_file is None:
            self.problem(
                (*prefix, "api_key"),
                "no api_key: set api_key_env to the name of an environment variable that holds the"
                " processor's secret API key, or name a credentials file ([credentials] file = ...)"
                f" and put it under [payments.{tenant}] there",
            )
            return None
        if self.credentials is None:  # the file itself is broken; already reported
            return None
        if tenant in self.payment_credentials and self.payment_credentials[tenant] is None:
            return None  # the entry is invalid; already reported
        entry = self.payment_credentials.get(tenant)
        if entry is None or entry.api_key is None:
            self.problem(
                ("payments", tenant, "api_key"),
                f"missing: tenant {tenant!r} has a payments section with no api_key_env in {self.file},"
                f" so its api_key must be given here under [payments.{tenant}]",
                file=self.credentials_file,
            )
            return None
        key = Secret(entry.api_key.strip())
        return self.usable_key(key, ("payments", tenant, "api_key"), "it", self.credentials_file)

    def usable_key(self, key: Secret | None, where: _Loc, source: str, file: str | None = None) -> Secret | None:
        """Refuse a Stripe publishable key (``pk_...``): it cannot charge or read anything."""
        if key is not None and key.reveal().startswith("pk_"):
            self.problem(
                where,
                f"{source} holds a publishable key (pk_...); use the secret key (sk_...) or a restricted key (rk_...)",
                file,
            )
            return None
        return key

    def unique_rule_names(self, rules: object, prefix: _Loc) -> bool:
        """Report each rule whose name an earlier rule already has (False when any does)."""
        if not isinstance(rules, list):
            return True  # the model reports it
        first: dict[str, int] = {}
        ok = True
        for index, rule in enumerate(rules):
            name = rule.get("name") if isinstance(rule, dict) else None
            if not isinstance(name, str):
                continue
            if name in first:
                ok = False
                self.problem(
                    (*prefix, "rules", index, "name"),
                    f"rule name {name!r} is already used by rules[{first[name]}];"
                    " rule names must be unique within a tenant",
                )
            else:
                first[name] = index
        return ok

    def unused_payment_credentials(self, tenants: Sequence[str]) -> None:
        if self.credentials_file is None:
            return
        for name in self.payment_credentials:
            if name in self.payment_tenants:
                continue
            if name in tenants:
                message = f"tenant {name!r} has no payments section ([tenants.{name}.payments]) in {self.file}"
            else:
                message = f"no tenant named {name!r} in {self.file}{_did_you_mean(name, tenants)}"
            self.problem(("payments", name), message, file=self.credentials_file)

    def unused_credentials(self, owners: Mapping[str, str]) -> None:
        if self.credentials is None or self.credentials_file is None:
            return
        for name in self.credentials:
            if name not in owners:
                hint = _did_you_mean(name, owners)
                self.problem(
                    ("connections", name),
                    f"no connection named {name!r} in {self.file}{hint}",
                    file=self.credentials_file,
                )


def _quickbooks_connection(
    raw: _RawQuickBooks, *, name: str, tenant: str, client_id: Secret, client_secret: Secret
) -> QuickBooksConnectionConfig:
    return QuickBooksConnectionConfig(
        name=name,
        tenant=tenant,
        kind=raw.kind,
        realm_id=raw.realm_id,
        environment=raw.environment,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=raw.redirect_uri,
        base_url=raw.base_url.rstrip("/") if raw.base_url else None,
        token_url=raw.token_url,
        discovery_url=raw.discovery_url,
        sync_interval_minutes=raw.sync_interval_minutes,
        entities=tuple(raw.entities),
        overlap_seconds=raw.overlap_seconds,
        delete_guard_ratio=raw.delete_guard_ratio,
        minor_version=raw.minor_version,
        timeout_seconds=raw.timeout_seconds,
        rate_limit=RateLimitConfig(
            per_second=raw.rate_limit.per_second,
            per_minute=raw.rate_limit.per_minute,
            concurrent=raw.rate_limit.concurrent,
        ),
        writeback=_writeback(raw.writeback),
    )


def _xero_connection(
    raw: _RawXero, *, name: str, tenant: str, client_id: Secret, client_secret: Secret
) -> XeroConnectionConfig:
    return XeroConnectionConfig(
        name=name,
        tenant=tenant,
        kind=raw.kind,
        xero_tenant_id=raw.xero_tenant_id,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=raw.redirect_uri,
        scopes=tuple(raw.scopes),
        base_url=raw.base_url.rstrip("/") if raw.base_url else None,
        identity_url=raw.identity_url.rstrip("/") if raw.identity_url else None,
        token_url=raw.token_url,
        authorize_url=raw.authorize_url,
        sync_interval_minutes=raw.sync_interval_minutes,
        entities=tuple(raw.entities),
        overlap_seconds=raw.overlap_seconds,
        delete_guard_ratio=raw.delete_guard_ratio,
        timeout_seconds=raw.timeout_seconds,
        page_size=raw.page_size,
        rate_limit=XeroRateLimitConfig(
            per_minute=raw.rate_limit.per_minute,
            per_day=raw.rate_limit.per_day,
            concurrent=raw.rate_limit.concurrent,
            app_per_minute=raw.rate_limit.app_per_minute,
        ),
        writeback=_writeback(raw.writeback),
    )


def _writeback(raw: _RawWriteback | None) -> WritebackConfig | None:
    if raw is None:
        return None
    return WritebackConfig(
        clearing_account=raw.clearing_account,
        bank_account=raw.bank_account,
        fee_account=raw.fee_account,
        surcharge_account=raw.surcharge_account,
        refund_account=raw.refund_account,
        refund_item=raw.refund_item,
        allocation_order=tuple(raw.allocation_order) if raw.allocation_order is not None else ALLOCATION_CLASSES,
        late_fee_items=tuple(raw.late_fee_items),
        collection_fee_items=tuple(raw.collection_fee_items),
        late_fee_item=raw.late_fee_item,
        late_fee_account=raw.late_fee_account,
        collections_fee_account=raw.collections_fee_account,
        collections_vendor=raw.collections_vendor,
    )


def _payments_config(raw: _RawPayments, api_key: Secret) -> PaymentsConfig:
    surcharge: SurchargePolicy | None = None
    if raw.surcharge is not None:
        surcharge = SurchargePolicy(
            percent=raw.surcharge.percent,
            fixed=raw.surcharge.fixed,
            max_percent=raw.surcharge.max_percent,
            exempt=SURCHARGE_EXEMPTIONS if raw.surcharge.exempt is None else frozenset(raw.surcharge.exempt),
            description=raw.surcharge.description,
        )
    rules = tuple(
        AutopayRule(
            name=rule.name,
            days_after_issue=rule.days_after_issue,
            on_due_date=rule.on_due_date,
            agreement_only=rule.agreement_only,
            min_amount=rule.min_amount,
            max_amount=rule.max_amount,
            currencies=frozenset(rule.currencies),
            tags_any=frozenset(rule.tags_any),
            tags_none=frozenset(rule.tags_none),
            method_types=frozenset(rule.method_types),
        )
        for rule in raw.rules
    )
    return PaymentsConfig(
        processor=raw.processor,
        api_key=api_key,
        base_url=raw.base_url.rstrip("/"),
        timeout_seconds=raw.timeout_seconds,
        success_url=raw.success_url,
        cancel_url=raw.cancel_url,
        charge_hour=raw.charge_hour,
        follow_interval_minutes=raw.follow_interval_minutes,
        autopay=AutopayPolicy(
            rules=rules,
            retry_days=tuple(raw.retry_days),
            surcharge=surcharge,
            apply_credits=raw.apply_credits,
            excluded_tags=frozenset(raw.excluded_tags),
        ),
    )


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``.

    Raises :class:`ConfigError` listing every problem found. ``environ`` is where
    ``*_env`` keys are looked up (default: :data:`os.environ`).
    """
    return _Loader(Path(path), os.environ if environ is None else environ).load()


def default_config(database_url: str) -> Config:
    """A config with no tenants, for commands that only need the database.

    A relative SQLite path is resolved against the current directory.
    """
    try:
        url = _database_url(database_url, Path.cwd())
    except ValueError as exc:
        raise ConfigError([ConfigProblem("<command line>", "database.url", str(exc))]) from None
    return Config(path=None, database=DatabaseConfig(url=url))
