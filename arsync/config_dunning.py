"""Configuration of dunning: ``[tenants.T.dunning]`` read into :mod:`collect.dunning_policy` values.

:mod:`arsync.config` calls :func:`read_dunning` for a tenant's ``dunning`` table
(through ``_Loader.dunning``). The same two layers as the rest of the file: the
``_Raw*`` pydantic models describe the TOML exactly (strict types, unknown keys
refused with a suggestion), and the result is a frozen :class:`DunningConfig`.

Policies, steps and actions are validated one by one, so a mistake in one step
does not hide the mistakes in the others, and every problem found inside a
policy names it, and its step, after the message::

    tenants.acme.dunning.policies[0].steps[2].actions[1].percent: must be less
    than or equal to 100 (got '150') (policy 'standard', step 'final-notice')

Secrets (the SMTP password, the SMS provider's auth token, the webhook signing
secrets) come from environment variables named by ``*_env`` keys, or from the
credentials file's ``[dunning.TENANT]`` table; they are held in :class:`Secret`
and never appear in an error message or a ``repr``.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import time, timedelta
from decimal import Decimal
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import holidays
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import collect.mail
from arsync.config import (
    _ENV_NAME_RE,
    Secret,
    _check_unique,
    _Currency,
    _describe,
    _did_you_mean,
    _dotted,
    _EnvName,
    _HttpUrl,
    _Loader,
    _Loc,
    _message,
    _Money,
    _NonBlank,
    _Percent,
    _Section,
    _Tags,
)
from collect.dunning_policy import (
    RISK_LEVELS,
    Action,
    CallTaskAction,
    CollectionsAction,
    CollectionsSettings,
    DunningPolicy,
    EmailAction,
    LateFeeAction,
    Policy,
    RiskLevel,
    Segment,
    SmsAction,
    StatementAction,
    Step,
    StepConditions,
    SuspendAction,
    WebhookTarget,
)
from collect.mail import Branding, MailSettings
from collect.send_window import Pacing, SendWindow

__all__ = [
    "ACTION_KINDS",
    "DEFAULT_SMTP_PORTS",
    "PDF_URL_PLACEHOLDERS",
    "TWILIO_API_BASE",
    "DunningConfig",
    "MailConfig",
    "SmsConfig",
    "packaged_templates",
    "read_dunning",
    "unused_dunning_credentials",
]

ACTION_KINDS: Final[tuple[str, ...]] = ("email", "statement", "sms", "call", "late_fee", "suspend", "collections")
"""Every action ``kind`` a step (or ``promise_broken``) may list."""
PDF_URL_PLACEHOLDERS: Final[tuple[str, ...]] = ("connection", "invoice")
DEFAULT_SMTP_PORTS: Final[Mapping[str, int]] = {"starttls": 587, "ssl": 465, "none": 25}
TWILIO_API_BASE: Final = "https://api.twilio.com"
SMTP_TIMEOUT_SECONDS: Final = 30.0
SMS_TIMEOUT_SECONDS: Final = 30.0

Security = Literal["starttls", "ssl", "none"]
_TEMPLATE_PARTS: Final = (".subject.txt", ".txt", ".html")
_TEMPLATE_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_EMAIL_RE: Final = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")
_E164_RE: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")
_TWILIO_SID_RE: Final = re.compile(r"^AC[0-9a-fA-F]{32}$")
_HEX_COLOUR_RE: Final = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_TIME_RE: Final = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?$")


# --------------------------------------------------------------------------- typed result


@dataclass(frozen=True, slots=True, kw_only=True)
class MailConfig:
    """The SMTP server dunning mail goes through (``[tenants.T.dunning.mail]``)."""

    host: str
    port: int = 587
    security: Security = "starttls"
    username: str | None = None
    password: Secret | None = None
    """Only with ``username``; from ``password_env`` or ``smtp_password`` in the credentials file."""
    sender: str
    """The From header, ``"Acme Billing <billing@acme.example>"`` or a bare address."""
    reply_to: str | None = None
    unsubscribe_url: str | None = None
    """An https URL template holding ``{token}``."""
    unsubscribe_mailto: str | None = None
    timeout_seconds: float = SMTP_TIMEOUT_SECONDS

    def settings(self) -> MailSettings:
        """What :class:`collect.mail.SmtpSender` takes; the password is revealed here, and only here."""
        return MailSettings(
            host=self.host,
            port=self.port,
            security=self.security,
            username=self.username,
            password=self.password.reveal() if self.password is not None else None,
            sender=self.sender,
            reply_to=self.reply_to,
            timeout_seconds=self.timeout_seconds,
            unsubscribe_url=self.unsubscribe_url,
            unsubscribe_mailto=self.unsubscribe_mailto,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SmsConfig:
    """The SMS provider (``[tenants.T.dunning.sms]``); only Twilio for now."""

    provider: Literal["twilio"] = "twilio"
    account_sid: str
    auth_token: Secret
    from_number: str
    """E.164, e.g. ``+15551234567``."""
    base_url: str = TWILIO_API_BASE
    """API root without a trailing slash (Twilio's, or a local server's in tests)."""
    timeout_seconds: float = SMS_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True, kw_only=True)
class DunningConfig:
    """Everything ``[tenants.T.dunning]`` says: the policies and how messages go out."""

    policy: DunningPolicy
    mail: MailConfig | None = None
    """None: no email can be sent (no email or statement action is configured either)."""
    branding: Branding
    sms: SmsConfig | None = None
    """None: no SMS can be sent (no sms action is configured either)."""


# --------------------------------------------------------------------------- value checks


def _check_email(value: str) -> str:
    if not _EMAIL_RE.fullmatch(value):
        raise ValueError(f"must be an email address such as 'ar@example.com' (got {value!r})")
    return value


def _check_sender(value: str) -> str:
    bracketed = re.fullmatch(r"[^<>\r\n]*<([^<>\r\n]*)>\s*", value)
    address = bracketed.group(1) if bracketed else value.strip()
    if not _EMAIL_RE.fullmatch(address) or parseaddr(value)[1] != address:
        raise ValueError(
            "must be an address such as 'Acme Billing <billing@acme.example>' or 'billing@acme.example'"
            f" (got {value!r})"
        )
    return value


def _check_mailto(value: str) -> str:
    address = value.removeprefix("mailto:").split("?")[0].replace("{token}", "token")
    if not _EMAIL_RE.fullmatch(address):
        raise ValueError(f"must be an email address such as 'unsubscribe@example.com' (got {value!r})")
    return value


def _placeholders(value: str, allowed: Sequence[str]) -> list[str]:
    """The ``{name}`` placeholders of ``value``; ValueError for malformed or unknown ones."""
    listing = ", ".join(f"{{{name}}}" for name in allowed)
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError:
        raise ValueError(f"has an unmatched '{{' or '}}'; the placeholders allowed are {listing}") from None
    found: list[str] = []
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            hint = _did_you_mean(name, allowed)
            raise ValueError(f"has an unknown placeholder {shown}{hint}; the placeholders allowed are {listing}")
        found.append(name)
    return found


def _check_pdf_url(value: str) -> str:
    if "invoice" not in _placeholders(value, PDF_URL_PLACEHOLDERS):
        raise ValueError("must contain {invoice} (otherwise every invoice links to the same file)")
    return value


def _check_unsubscribe_url(value: str) -> str:
    if "token" not in _placeholders(value, ("token",)):
        raise ValueError("must contain {token}, which identifies the contact who unsubscribes")
    if not value.startswith("https://"):
        raise ValueError("must be an https:// URL (one-click unsubscribe, RFC 8058, needs HTTPS)")
    return value


def _check_template(value: str) -> str:
    if not _TEMPLATE_RE.fullmatch(value):
        raise ValueError(
            "must be a template name (letters, digits, '_' and '-', no folder or extension),"
            f" such as 'reminder_overdue' (got {value!r})"
        )
    return value


def _check_colour(value: str) -> str:
    if not _HEX_COLOUR_RE.fullmatch(value):
        raise ValueError(f"must be a hex colour such as '#1f4e79' (got {value!r})")
    return value


def _to_time(value: object) -> object:
    """A local time of day: ``"09:00"`` (or ``"09:00:30"``), or a TOML local time (``09:00:00``)."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ValueError("must be a local time of day without an offset")
        return value
    if isinstance(value, str):
        match = _TIME_RE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f'must be a time of day such as "09:00" (got {value!r})')
        hour, minute, second = match.groups()
        return time(int(hour), int(minute), int(second or 0))
    raise ValueError(f'must be a time of day such as "09:00", not {_describe(value)}')


_Email = Annotated[str, AfterValidator(_check_email)]
_Template = Annotated[str, AfterValidator(_check_template)]
_Time = Annotated[time, BeforeValidator(_to_time)]
_Currencies = Annotated[list[_Currency], AfterValidator(_check_unique)]
_Codes = Annotated[list[_NonBlank], AfterValidator(_check_unique)]
_RiskLevels = Annotated[list[RiskLevel], AfterValidator(_check_unique)]


def _not_both(value: list[str], info: ValidationInfo) -> list[str]:
    """For ``tags_none``: a tag cannot be both required (``tags_any``) and excluded."""
    both = sorted(set(value) & set(info.data.get("tags_any", ())))
    if both:
        listed = ", ".join(repr(tag) for tag in both)
        raise ValueError(f"lists {listed}, which tags_any requires; a tag cannot be both required and excluded")
    return value


def _not_below(low_key: str, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
    low = info.data.get(low_key)
    if value is not None and low is not None and value < low:
        raise ValueError(f"must be at least {low_key} ({low}); got {value}")
    return value


# --------------------------------------------------------------------------- file shape


class _RawWindow(_Section):
    start: _Time = time(9)
    end: _Time = time(17)
    business_days_only: bool = True
    country: str | None = None
    subdivision: str | None = None

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: time, info: ValidationInfo) -> time:
        start = info.data.get("start")
        if start is not None and not value > start:
            raise ValueError(f"must be after start ({start:%H:%M}); got {value:%H:%M}")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        known = _countries()
        if value not in known:
            upper = value.upper()
            hint = f" (did you mean {upper!r}?)" if upper in known else _did_you_mean(value, known)
            raise ValueError(
                f"unknown country {value!r}{hint}: use an ISO 3166-1 alpha-2 code the holidays package"
                " supports, such as 'US' or 'GB'"
            )
        return value

    @field_validator("subdivision")
    @classmethod
    def _subdivision(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if "country" not in info.data:
            return value  # the country itself is wrong, and reported
        country = info.data["country"]
        if country is None:
            raise ValueError("needs a country (the subdivision's public holidays are the country's and its own)")
        known = _countries()[country]
        if value in known or _subdivision_accepted(country, value):
            return value
        if not known:
            raise ValueError(f"unknown subdivision {value!r}: the holidays package has none for {country!r}")
        upper = value.upper()
        hint = f" (did you mean {upper!r}?)" if upper in known else _did_you_mean(value, known)
        raise ValueError(f"unknown subdivision {value!r} of {country!r}{hint}; known: {', '.join(known)}")


class _RawPacing(_Section):
    daily_cap: int | None = Field(default=None, ge=1)
    min_gap_hours: int = Field(default=24, ge=0)


class _RawWebhook(_Section):
    url: _HttpUrl
    # Refused when present (see _Reader.refuse_inline); typed ``object`` so that its
    # value is never validated and so can never appear in an error message.
    secret: object = None
    secret_env: _EnvName | None = None


class _RawCollections(_Section):
    eligible_after_days: int = Field(default=30, ge=0)
    agency_name: _NonBlank = "Collections agency"
    email: _Email | None = None
    upfront_percent: _Percent = Decimal(0)
    success_percent: _Percent = Decimal(0)
    webhook: _RawWebhook | None = None


class _RawMail(_Section):
    host: _NonBlank
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Security = "starttls"
    username: _NonBlank | None = None
    password: object = None  # refused, like _RawWebhook.secret
    password_env: _EnvName | None = None
    sender: Annotated[str, AfterValidator(_check_sender)]
    reply_to: _Email | None = None
    unsubscribe_url: Annotated[_HttpUrl, AfterValidator(_check_unsubscribe_url)] | None = None
    unsubscribe_mailto: Annotated[str, AfterValidator(_check_mailto)] | None = None
    timeout_seconds: float = Field(default=SMTP_TIMEOUT_SECONDS, gt=0)

    @field_validator("username")
    @classmethod
    def _not_in_clear(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("security") == "none":
            raise ValueError(
                "needs security = 'starttls' or 'ssl': with security = 'none' the password would cross the network"
                " in clear (leave username out for a relay that needs no login)"
            )
        return value


class _RawBranding(_Section):
    company_name: _NonBlank | None = None
    logo_url: _HttpUrl | None = None
    accent_color: Annotated[str, AfterValidator(_check_colour)] = "#1f4e79"
    footer: str = ""
    support_email: _Email | None = None
    template_dir: _NonBlank | None = None


class _RawSms(_Section):
    provider: Literal["twilio"] = "twilio"
    account_sid: str
    auth_token: object = None  # refused, like _RawWebhook.secret
    auth_token_env: _EnvName | None = None
    from_number: str
    base_url: _HttpUrl = TWILIO_API_BASE
    timeout_seconds: float = Field(default=SMS_TIMEOUT_SECONDS, gt=0)

    @field_validator("account_sid")
    @classmethod
    def _sid(cls, value: str) -> str:
        if not _TWILIO_SID_RE.fullmatch(value):
            raise ValueError("must be the Twilio Account SID: 'AC' and 32 hexadecimal digits")
        return value

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not _E164_RE.fullmatch(value):
            raise ValueError(f"must be a phone number in E.164 form, such as '+15551234567' (got {value!r})")
        return value


class _RawDunning(_Section):
    paused: bool = False
    run_hour: int = Field(default=8, ge=0, le=23)
    reset_on_partial_payment: bool = True
    autopay_grace_days: int = Field(default=3, ge=0)
    plan_reminder_days: int = Field(default=3, ge=0)
    summary: Literal["none", "weekly", "monthly"] = "none"
    pdf_url: Annotated[_HttpUrl, AfterValidator(_check_pdf_url)] | None = None
    # Actions and policies are validated one by one (see _Reader), so that one
    # mistake does not hide the others and each problem names its policy and step.
    promise_broken: list[object] = Field(default_factory=list)
    window: _RawWindow = Field(default_factory=_RawWindow)
    pacing: _RawPacing = Field(default_factory=_RawPacing)
    suspension_webhook: _RawWebhook | None = None
    collections: _RawCollections = Field(default_factory=_RawCollections)
    mail: _RawMail | None = None
    branding: _RawBranding = Field(default_factory=_RawBranding)
    sms: _RawSms | None = None
    policies: list[object] = Field(default_factory=list)


class _RawSegment(_Section):
    tags_any: _Tags = Field(default_factory=list)
    tags_none: _Tags = Field(default_factory=list)
    currencies: _Currencies = Field(default_factory=list)
    min_balance: _Money | None = None
    max_balance: _Money | None = None
    risk_levels: _RiskLevels = Field(default_factory=list)
    autopay: bool | None = None

    @field_validator("tags_none")
    @classmethod
    def _tags(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return _not_both(value, info)

    @field_validator("max_balance")
    @classmethod
    def _max(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        return _not_below("min_balance", value, info)


class _RawConditions(_Section):
    min_balance: _Money | None = None
    min_unpaid_invoices: int | None = Field(default=None, ge=1)
    tags_any: _Tags = Field(default_factory=list)
    tags_none: _Tags = Field(default_factory=list)
    decline_codes: _Codes = Field(default_factory=list)

    @field_validator("tags_none")
    @classmethod
    def _tags(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return _not_both(value, info)


class _RawPolicy(_Section):
    name: _NonBlank
    segment: _RawSegment = Field(default_factory=_RawSegment)
    steps: list[object] = Field(default_factory=list)


class _RawStep(_Section):
    name: _NonBlank
    days: int
    anchor: Literal["due", "previous"] = "due"
    conditions: _RawConditions = Field(default_factory=_RawConditions)
    actions: list[object] = Field(default_factory=list)


class _RawEmail(_Section):
    kind: Literal["email"]
    template: _Template


class _RawStatement(_Section):
    kind: Literal["statement"]
    template: _Template = "statement"


class _RawSmsAction(_Section):
    kind: Literal["sms"]
    template: _Template


class _RawCall(_Section):
    kind: Literal["call"]
    note: _NonBlank = "Call the customer about the overdue balance"
    assignee: _NonBlank | None = None


class _RawLateFee(_Section):
    kind: Literal["late_fee"]
    flat: _Money = Decimal(0)
    percent: _Percent = Decimal(0)
    minimum: _Money | None = None
    maximum: _Money | None = None
    grace_days: int = Field(default=0, ge=0)
    compound: bool = False
    booking: Literal["line", "invoice"] = "line"
    description: _NonBlank = "Late payment fee"

    @field_validator("maximum")
    @classmethod
    def _max(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        return _not_below("minimum", value, info)

    @model_validator(mode="after")
    def _charges_something(self) -> _RawLateFee:
        if not self.flat and not self.percent:
            raise ValueError("charges nothing: set flat, percent or both (a minimum alone is not a fee)")
        return self


class _RawSuspend(_Section):
    kind: Literal["suspend"]
    tag: _NonBlank = "credit-hold"


class _RawCollectionsAction(_Section):
    kind: Literal["collections"]
    submit: bool = False
    assignee: _NonBlank | None = None


_RawAction = _RawEmail | _RawStatement | _RawSmsAction | _RawCall | _RawLateFee | _RawSuspend | _RawCollectionsAction
_ACTION_MODELS: Final[dict[str, type[_RawAction]]] = {
    "email": _RawEmail,
    "statement": _RawStatement,
    "sms": _RawSmsAction,
    "call": _RawCall,
    "late_fee": _RawLateFee,
    "suspend": _RawSuspend,
    "collections": _RawCollectionsAction,
}
assert tuple(_ACTION_MODELS) == ACTION_KINDS


# The credentials file's [dunning.TENANT] keys, and the table of [tenants.TENANT.dunning] each serves.
_CREDENTIAL_SECTIONS: Final[Mapping[str, str]] = {
    "smtp_password": "mail",
    "sms_auth_token": "sms",
    "suspension_secret": "suspension_webhook",
    "agency_secret": "collections.webhook",
}


# --------------------------------------------------------------------------- holidays


@functools.cache
def _countries() -> Mapping[str, Sequence[str]]:
    """ISO 3166-1 alpha-2 codes the holidays package supports, with their subdivision codes."""
    return holidays.list_supported_countries(include_aliases=False)


def _subdivision_accepted(country: str, subdivision: str) -> bool:
    """Whether the holidays package takes ``subdivision`` (an alias such as 'England' included)."""
    try:
        holidays.country_holidays(country, subdiv=subdivision, years=2000)
    except (NotImplementedError, ValueError, KeyError):
        return False
    return True


# --------------------------------------------------------------------------- templates


def packaged_templates() -> Path:
    """The folder of the templates shipped with :mod:`collect` (``collect/templates``)."""
    return Path(collect.mail.__file__).parent / "templates"


def _template_names(folders: Iterable[Path]) -> frozenset[str]:
    """Names whose subject, text and HTML parts all exist, each in one of ``folders`` (first wins)."""
    files: set[str] = set()
    for folder in folders:
        if folder.is_dir():
            files.update(path.name for path in folder.iterdir() if path.is_file())
    names = {name.removesuffix(".subject.txt") for name in files if name.endswith(".subject.txt")}
    return frozenset(name for name in names if all(f"{name}{part}" in files for part in _TEMPLATE_PARTS))


# --------------------------------------------------------------------------- the reader


_M = TypeVar("_M", bound=BaseModel)


@dataclass(slots=True)
class _ReadAction:
    loc: _Loc
    raw: _RawAction


class _Reader:
    """Reads one tenant's ``[tenants.T.dunning]`` table; problems go to the loader."""

    def __init__(self, loader: _Loader, tenant: str, display_name: str, body: dict[str, Any]) -> None:
        self.loader = loader
        self.tenant = tenant
        self.display_name = display_name
        self.body = body
        self.prefix: _Loc = ("tenants", tenant, "dunning")
        self.ok = True
        # every valid action of every step and of promise_broken, for the checks across sections
        self.all_actions: list[_ReadAction] = []
        self.policy_names: dict[int, str] = {}
        self.step_names: dict[tuple[int, int], str] = {}
        policies = body.get("policies")
        for p, policy in enumerate(policies if isinstance(policies, list) else ()):
            if not isinstance(policy, dict):
                continue
            if isinstance(policy.get("name"), str):
                self.policy_names[p] = policy["name"]
            steps = policy.get("steps")
            for s, step in enumerate(steps if isinstance(steps, list) else ()):
                if isinstance(step, dict) and isinstance(step.get("name"), str):
                    self.step_names[(p, s)] = step["name"]

    # -- problems

    def where(self, loc: _Loc) -> str:
        """`` (policy 'standard', step 'final-notice')`` for a key inside a policy, else empty."""
        parts: list[str] = []
        if len(loc) >= 2 and loc[0] == "policies" and isinstance(loc[1], int):
            if loc[1] in self.policy_names:
                parts.append(f"policy {self.policy_names[loc[1]]!r}")
            if len(loc) >= 4 and loc[2] == "steps" and isinstance(loc[3], int) and (loc[1], loc[3]) in self.step_names:
                parts.append(f"step {self.step_names[(loc[1], loc[3])]!r}")
        return f" ({', '.join(parts)})" if parts else ""

    def problem(self, loc: _Loc, message: str) -> None:
        """A problem at ``tenants.T.dunning.<loc>``, naming the policy and step it is in."""
        self.ok = False
        self.loader.problem((*self.prefix, *loc), message + self.where(loc))

    def validate(self, model: type[_M], data: object, loc: _Loc) -> _M | None:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        for error in errors:
            self.problem((*loc, *error["loc"]), _message(error, model))
        return None

    def dunning_key(self, *loc: str | int) -> str:
        return _dotted((*self.prefix, *loc))

    # -- secrets

    def refuse_inline(self, section: object, loc: _Loc, key: str, credential: str) -> None:
        if isinstance(section, dict) and key in section:
            self.problem(
                (*loc, key),
                "secrets may not be written in the config file; put secrets in an environment variable or"
                f' the credentials file ({key}_env = "VARIABLE_NAME" here, or {credential} under'
                f" [dunning.{self.tenant}] in the [credentials] file)",
            )

    def secret(self, section: Mapping[str, object], loc: _Loc, key: str, credential: str, what: str) -> Secret | None:
        """``key`` of the table at ``loc``: from ``{key}_env``, else ``credential`` in the credentials file."""
        loader = self.loader
        env_key = f"{key}_env"
        env_name = section.get(env_key)
        if env_name is not None:
            if not (isinstance(env_name, str) and _ENV_NAME_RE.fullmatch(env_name)):
                return None  # the model reports it
            value = loader.from_env((*self.prefix, *loc, env_key), env_name)
            self.ok = self.ok and value is not None
            return value
        if key in section:
            return None  # refused
        if loader.credentials_file is None:
            self.problem(
                (*loc, key),
                f"no {key}: set {env_key} to the name of an environment variable that holds {what}, or name a"
                f" credentials file ([credentials] file = ...) and put it there as {credential} under"
                f" [dunning.{self.tenant}]",
            )
            return None
        if loader.credentials is None:  # the file itself is broken; already reported
            self.ok = False
            return None
        if self.tenant in loader.dunning_credentials and loader.dunning_credentials[self.tenant] is None:
            self.ok = False  # the entry is invalid; already reported
            return None
        entry = loader.dunning_credentials.get(self.tenant)
        value = getattr(entry, credential) if entry is not None else None
        if value is None:
            self.ok = False
            loader.problem(
                ("dunning", self.tenant, credential),
                f"missing: {self.dunning_key(*loc)} has no {env_key} in {loader.file},"
                f" so its {key} must be given here as {credential} under [dunning.{self.tenant}]",
                file=loader.credentials_file,
            )
            return None
        return Secret(value.strip())

    # -- actions

    def action(self, body: object, loc: _Loc) -> _RawAction | None:
        kinds = ", ".join(ACTION_KINDS)
        if not isinstance(body, dict):
            self.problem(loc, f'must be a table such as {{ kind = "email", template = "..." }}, not {_describe(body)}')
            return None
        if "kind" not in body:
            self.problem((*loc, "kind"), f"missing required key; known kinds: {kinds}")
            return None
        kind = body["kind"]
        if not isinstance(kind, str) or kind not in _ACTION_MODELS:
            shown = repr(kind) if isinstance(kind, str) else _describe(kind)
            hint = _did_you_mean(kind, ACTION_KINDS) if isinstance(kind, str) else ""
            self.problem((*loc, "kind"), f"unknown action kind {shown}{hint}; known kinds: {kinds}")
            return None
        return self.validate(_ACTION_MODELS[kind], body, loc)

    def actions(self, items: Sequence[object], loc: _Loc) -> tuple[list[_ReadAction], bool]:
        """The actions that are valid (each also kept for the checks across sections), and whether all are."""
        out: list[_ReadAction] = []
        ok = True
        for index, item in enumerate(items):
            raw = self.action(item, (*loc, index))
            if raw is None:
                ok = False
            else:
                out.append(_ReadAction((*loc, index), raw))
        self.all_actions.extend(out)
        return out, ok

    # -- policies

    def policies(self, items: Sequence[object]) -> list[Policy] | None:
        out: list[Policy] = []
        ok = True
        first: dict[str, int] = {}
        for p, body in enumerate(items):
            loc: _Loc = ("policies", p)
            raw = self.validate(_RawPolicy, body, loc)
            name = body.get("name") if isinstance(body, dict) else None
            if isinstance(name, str):
                if name in first:
                    ok = False
                    self.problem(
                        (*loc, "name"),
                        f"policy name {name!r} is already used by policies[{first[name]}];"
                        " policy names must be unique within a tenant",
                    )
                else:
                    first[name] = p
            steps_body = body.get("steps") if isinstance(body, dict) else None
            steps = self.steps(steps_body, loc) if isinstance(steps_body, list) else []
            if isinstance(body, dict) and (steps_body is None or steps_body == []):
                ok = False
                self.problem(
                    (*loc, "steps"),
                    "a policy needs at least one step: add [[...policies.steps]] tables after the policy's"
                    " name (each with name, days and actions)",
                )
            if raw is None or steps is None:
                ok = False
                continue
            out.append(Policy(name=raw.name, segment=_segment(raw.segment), steps=tuple(steps)))
        return out if ok else None

    def steps(self, items: Sequence[object], loc: _Loc) -> list[Step] | None:
        out: list[Step] = []
        ok = True
        first: dict[str, int] = {}
        previous: tuple[str, int] | None = None  # name and day (relative to the due date) of the last good step
        ordered = True  # False once a step cannot be placed, so that later steps are not compared
        for s, body in enumerate(items):
            step_loc: _Loc = (*loc, "steps", s)
            raw = self.validate(_RawStep, body, step_loc)
            name = body.get("name") if isinstance(body, dict) else None
            if isinstance(name, str):
                if name in first:
                    ok = False
                    self.problem(
                        (*step_loc, "name"),
                        f"step name {name!r} is already used by steps[{first[name]}];"
                        " step names must be unique within a policy",
                    )
                else:
                    first[name] = s
            actions_body = body.get("actions") if isinstance(body, dict) else None
            actions: list[_ReadAction] = []
            actions_ok = True
            if isinstance(actions_body, list):
                actions, actions_ok = self.actions(actions_body, (*step_loc, "actions"))
            if isinstance(body, dict) and (actions_body is None or actions_body == []):
                ok = False
                self.problem(
                    (*step_loc, "actions"),
                    f"a step needs at least one action; known kinds: {', '.join(ACTION_KINDS)}",
                )
            if raw is None:
                ok = ordered = False
                continue
            if raw.anchor == "previous" and s == 0:
                ok = ordered = False
                self.problem(
                    (*step_loc, "anchor"),
                    "the first step has no previous step to count from; use anchor = 'due'",
                )
                continue
            if ordered:
                day = raw.days if raw.anchor == "due" or previous is None else previous[1] + raw.days
                if previous is not None and day < previous[1]:
                    ok = False
                    self.problem(
                        (*step_loc, "days"),
                        f"this step falls on day {_day(day)} (relative to the due date), before the previous"
                        f" step {previous[0]!r} on day {_day(previous[1])}; list a policy's steps in date order",
                    )
                previous = (raw.name, day)
            if not actions_ok:
                ok = False
                continue
            out.append(
                Step(
                    name=raw.name,
                    days=raw.days,
                    anchor=raw.anchor,
                    conditions=_conditions(raw.conditions),
                    actions=tuple(_action(item.raw) for item in actions),
                )
            )
        return out if ok else None

    # -- the whole table

    def read(self) -> DunningConfig | None:
        body = self.body
        mail_body = body.get("mail")
        sms_body = body.get("sms")
        hook_body = body.get("suspension_webhook")
        collections_body = body.get("collections")
        agency_body = collections_body.get("webhook") if isinstance(collections_body, dict) else None
        self.refuse_inline(mail_body, ("mail",), "password", "smtp_password")
        self.refuse_inline(sms_body, ("sms",), "auth_token", "sms_auth_token")
        self.refuse_inline(hook_body, ("suspension_webhook",), "secret", "suspension_secret")
        self.refuse_inline(agency_body, ("collections", "webhook"), "secret", "agency_secret")

        # the tables present, for the credentials file's unused-entry check
        tables: set[str] = set()
        password: Secret | None = None
        if isinstance(mail_body, dict):
            tables.add("mail")
            if mail_body.get("username") is not None:
                tables.add("mail.username")
                password = self.secret(mail_body, ("mail",), "password", "smtp_password", "the SMTP password")
            elif mail_body.get("password_env") is not None:
                self.problem(("mail", "password_env"), "a password needs a username: set username too")
        auth_token: Secret | None = None
        if isinstance(sms_body, dict):
            tables.add("sms")
            auth_token = self.secret(sms_body, ("sms",), "auth_token", "sms_auth_token", "the provider's auth token")
        hook_secret: Secret | None = None
        if isinstance(hook_body, dict):
            tables.add("suspension_webhook")
            hook_secret = self.secret(
                hook_body, ("suspension_webhook",), "secret", "suspension_secret", "the webhook signing secret"
            )
        agency_secret: Secret | None = None
        if isinstance(agency_body, dict):
            tables.add("collections.webhook")
            agency_secret = self.secret(
                agency_body, ("collections", "webhook"), "secret", "agency_secret", "the webhook signing secret"
            )
        self.loader.dunning_tables[self.tenant] = frozenset(tables)

        raw = self.validate(_RawDunning, body, ())
        promise_body = body.get("promise_broken")
        promise: list[_ReadAction] = []
        promise_ok = True
        if isinstance(promise_body, list):
            promise, promise_ok = self.actions(promise_body, ("promise_broken",))
        policies_body = body.get("policies")
        policies = self.policies(policies_body) if isinstance(policies_body, list) else []

        # checks across sections, on what is written (so that they run even when other keys are wrong)
        template_dir = self.template_dir(body.get("branding"))
        if template_dir is not False:
            folders = [Path(template_dir)] if template_dir else []
            templates = _template_names([*folders, packaged_templates()])
        mail = mail_body is not None
        mail_table = self.dunning_key("mail")
        for item in self.all_actions:
            self.needs_channel(item, mail=mail, sms=sms_body is not None)
            if template_dir is not False:
                self.template_exists(item, templates, template_dir)
        summary = body.get("summary")
        if summary in ("weekly", "monthly") and not mail:
            self.problem(
                ("summary",), f"a {summary} summary is an email: add a [{mail_table}] section (the SMTP server)"
            )
        collections = collections_body if isinstance(collections_body, dict) else {}
        if collections.get("email") is not None and not mail:
            self.problem(
                ("collections", "email"),
                f"sending the package to the agency by email needs a [{mail_table}] section (the SMTP server)",
            )
        if collections.get("webhook") is None and collections.get("email") is None:
            for item in self.all_actions:
                if isinstance(item.raw, _RawCollectionsAction) and item.raw.submit:
                    self.problem(
                        (*item.loc, "submit"),
                        "submit = true sends the package to the agency at once, but"
                        f" [{self.dunning_key('collections')}] has neither a webhook nor an email;"
                        " add one, or leave submit out to make the hand-off a task for a person",
                    )
        if raw is None or not self.ok or not promise_ok or policies is None or template_dir is False:
            return None
        if (raw.suspension_webhook is not None and hook_secret is None) or (
            raw.collections.webhook is not None and agency_secret is None
        ):
            return None
        if raw.sms is not None and auth_token is None:
            return None
        return self.build(raw, policies, promise, password, auth_token, hook_secret, agency_secret, template_dir)

    def template_dir(self, branding: object) -> str | Literal[False] | None:
        """The tenant's template folder made absolute; None when not set, False when it is unusable."""
        if not isinstance(branding, dict) or "template_dir" not in branding:
            return None
        value = branding["template_dir"]
        if not isinstance(value, str) or not value.strip():
            return False  # the model reports it
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.loader.folder / path
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            self.problem(("branding", "template_dir"), f"{path} {what}; relative paths start at this file's folder")
            return False
        return str(path)

    def needs_channel(self, item: _ReadAction, *, mail: bool, sms: bool) -> None:
        raw = item.raw
        if isinstance(raw, _RawEmail | _RawStatement) and not mail:
            what = "an email" if isinstance(raw, _RawEmail) else "a statement (an email)"
            self.problem(
                item.loc,
                f"{what} action needs a [{self.dunning_key('mail')}] section (the SMTP server to send through)",
            )
        if isinstance(raw, _RawSmsAction) and not sms:
            self.problem(item.loc, f"an sms action needs a [{self.dunning_key('sms')}] section (the SMS provider)")

    def template_exists(self, item: _ReadAction, known: frozenset[str], template_dir: str | None) -> None:
        raw = item.raw
        if not isinstance(raw, _RawEmail | _RawStatement | _RawSmsAction) or raw.template in known:
            return
        where = "the packaged templates" + (f" or {template_dir}" if template_dir else "")
        self.problem(
            (*item.loc, "template"),
            f"no template named {raw.template!r} in {where}{_did_you_mean(raw.template, known)}"
            " (a template is three files: NAME.subject.txt, NAME.txt and NAME.html);"
            f" available: {', '.join(sorted(known)) or '(none)'}",
        )

    def build(
        self,
        raw: _RawDunning,
        policies: list[Policy],
        promise: list[_ReadAction],
        password: Secret | None,
        auth_token: Secret | None,
        hook_secret: Secret | None,
        agency_secret: Secret | None,
        template_dir: str | None,
    ) -> DunningConfig | None:
        try:
            window = SendWindow(
                start=raw.window.start,
                end=raw.window.end,
                business_days_only=raw.window.business_days_only,
                country=raw.window.country,
                subdivision=raw.window.subdivision,
            )
        except ValueError as exc:  # checked above already; the type's own word as a last resort
            self.problem(("window",), str(exc))
            return None
        collections = raw.collections
        policy = DunningPolicy(
            paused=raw.paused,
            policies=tuple(policies),
            window=window,
            pacing=Pacing(daily_cap=raw.pacing.daily_cap, min_gap=timedelta(hours=raw.pacing.min_gap_hours)),
            run_hour=raw.run_hour,
            reset_on_partial_payment=raw.reset_on_partial_payment,
            autopay_grace_days=raw.autopay_grace_days,
            promise_broken=tuple(_action(item.raw) for item in promise),
            plan_reminder_days=raw.plan_reminder_days,
            summary=raw.summary,
            suspension_webhook=_webhook(raw.suspension_webhook, hook_secret),
            collections=CollectionsSettings(
                eligible_after_days=collections.eligible_after_days,
                agency_name=collections.agency_name,
                webhook=_webhook(collections.webhook, agency_secret),
                email=collections.email,
                upfront_percent=collections.upfront_percent,
                success_percent=collections.success_percent,
            ),
            pdf_url=raw.pdf_url,
        )
        mail: MailConfig | None = None
        if raw.mail is not None:
            mail = MailConfig(
                host=raw.mail.host,
                port=raw.mail.port if raw.mail.port is not None else DEFAULT_SMTP_PORTS[raw.mail.security],
                security=raw.mail.security,
                username=raw.mail.username,
                password=password,
                sender=raw.mail.sender,
                reply_to=raw.mail.reply_to,
                unsubscribe_url=raw.mail.unsubscribe_url,
                unsubscribe_mailto=raw.mail.unsubscribe_mailto,
                timeout_seconds=raw.mail.timeout_seconds,
            )
            try:
                mail.settings()
            except ValueError as exc:  # every rule of MailSettings is checked above; this is a backstop
                self.problem(("mail",), str(exc))
                return None
        sms: SmsConfig | None = None
        if raw.sms is not None and auth_token is not None:
            sms = SmsConfig(
                provider=raw.sms.provider,
                account_sid=raw.sms.account_sid,
                auth_token=auth_token,
                from_number=raw.sms.from_number,
                base_url=raw.sms.base_url.rstrip("/"),
                timeout_seconds=raw.sms.timeout_seconds,
            )
        b = raw.branding
        try:
            branding = Branding(
                company_name=b.company_name or self.display_name,
                logo_url=b.logo_url,
                accent_color=b.accent_color,
                footer=b.footer,
                support_email=b.support_email,
                template_dir=template_dir,
            )
        except ValueError as exc:  # likewise a backstop
            self.problem(("branding",), str(exc))
            return None
        return DunningConfig(policy=policy, mail=mail, branding=branding, sms=sms)


def _day(day: int) -> str:
    return f"+{day}" if day > 0 else str(day)


# --------------------------------------------------------------------------- conversion


def _segment(raw: _RawSegment) -> Segment:
    return Segment(
        tags_any=frozenset(raw.tags_any),
        tags_none=frozenset(raw.tags_none),
        currencies=frozenset(raw.currencies),
        min_balance=raw.min_balance,
        max_balance=raw.max_balance,
        risk_levels=frozenset(level for level in RISK_LEVELS if level in raw.risk_levels),
        autopay=raw.autopay,
    )


def _conditions(raw: _RawConditions) -> StepConditions:
    return StepConditions(
        min_balance=raw.min_balance,
        min_unpaid_invoices=raw.min_unpaid_invoices,
        tags_any=frozenset(raw.tags_any),
        tags_none=frozenset(raw.tags_none),
        decline_codes=frozenset(raw.decline_codes),
    )


def _action(raw: _RawAction) -> Action:
    if isinstance(raw, _RawEmail):
        return EmailAction(template=raw.template)
    if isinstance(raw, _RawStatement):
        return StatementAction(template=raw.template)
    if isinstance(raw, _RawSmsAction):
        return SmsAction(template=raw.template)
    if isinstance(raw, _RawCall):
        return CallTaskAction(note=raw.note, assignee=raw.assignee)
    if isinstance(raw, _RawLateFee):
        return LateFeeAction(
            flat=raw.flat,
            percent=raw.percent,
            minimum=raw.minimum,
            maximum=raw.maximum,
            grace_days=raw.grace_days,
            compound=raw.compound,
            booking=raw.booking,
            description=raw.description,
        )
    if isinstance(raw, _RawSuspend):
        return SuspendAction(tag=raw.tag)
    return CollectionsAction(submit=raw.submit, assignee=raw.assignee)


def _webhook(raw: _RawWebhook | None, secret: Secret | None) -> WebhookTarget | None:
    if raw is None or secret is None:
        return None
    return WebhookTarget(url=raw.url, secret=secret.reveal())


# --------------------------------------------------------------------------- entry points


def read_dunning(loader: _Loader, tenant: str, display_name: str, body: object) -> DunningConfig | None:
    """``[tenants.T.dunning]`` of ``tenant``; None (with problems on ``loader``) when anything is wrong."""
    if not isinstance(body, dict):
        loader.problem(("tenants", tenant, "dunning"), f"must be a table, not {_describe(body)}")
        # the section is there, only broken: keep the credentials file's entry for it quiet
        loader.dunning_tables[tenant] = frozenset({"mail.username", *_CREDENTIAL_SECTIONS.values()})
        return None
    return _Reader(loader, tenant, display_name, body).read()


def unused_dunning_credentials(loader: _Loader, tenants: Sequence[str]) -> None:
    """Report ``[dunning.TENANT]`` entries (and keys) of the credentials file that nothing uses."""
    if loader.credentials_file is None:
        return
    for name, entry in loader.dunning_credentials.items():
        if name not in loader.dunning_tables:
            if name in tenants:
                message = f"tenant {name!r} has no dunning section ([tenants.{name}.dunning]) in {loader.file}"
            else:
                message = f"no tenant named {name!r} in {loader.file}{_did_you_mean(name, tenants)}"
            loader.problem(("dunning", name), message, file=loader.credentials_file)
            continue
        if entry is None:
            continue
        tables = loader.dunning_tables[name]
        for key, section in _CREDENTIAL_SECTIONS.items():
            needed = "mail.username" if key == "smtp_password" else section
            if getattr(entry, key) is None or needed in tables:
                continue
            table = f"tenants.{name}.dunning.{section}"
            if section in tables:
                why = f"[{table}] has no username (a relay without login needs no password)"
            else:
                why = f"there is no [{table}] section"
            loader.problem(("dunning", name, key), f"unused: {why} in {loader.file}", file=loader.credentials_file)
