"""Configs that point connections at the local sandbox servers (demo, tests, benchmarks)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import requests

from arsync.bootstrap import App
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.stripe.sandbox import StripeSandbox
from connectors.xero.client import XeroAuth, choose_organisation
from connectors.xero.sandbox import XeroSandbox

REDIRECT = "http://127.0.0.1:8765/callback"


@dataclass(frozen=True)
class SandboxConnection:
    tenant: str
    tenant_name: str
    name: str
    client_id: str
    client_secret: str
    settings: Mapping[str, object]
    home_currency: str = "USD"


def quickbooks_connection(sandbox: QuickBooksSandbox, *, tenant: str, tenant_name: str, name: str) -> SandboxConnection:
    return SandboxConnection(
        tenant,
        tenant_name,
        name,
        sandbox.client_id,
        sandbox.client_secret,
        {
            "kind": "quickbooks",
            "environment": "sandbox",
            "redirect_uri": REDIRECT,
            "base_url": sandbox.api_base,
            "token_url": sandbox.token_url,
            "discovery_url": sandbox.discovery_url,
        },
    )


def xero_connection(sandbox: XeroSandbox, *, tenant: str, tenant_name: str, name: str) -> SandboxConnection:
    return SandboxConnection(
        tenant,
        tenant_name,
        name,
        sandbox.client_id,
        sandbox.client_secret,
        {
            "kind": "xero",
            "redirect_uri": REDIRECT,
            "base_url": sandbox.api_base,
            "identity_url": sandbox.identity_base,
            "token_url": sandbox.token_url,
            "authorize_url": sandbox.authorize_url,
        },
    )


@dataclass(frozen=True)
class SandboxPayments:
    """A tenant's ``[tenants.T.payments]`` section; its API key goes in the credentials file."""

    api_key: str
    settings: Mapping[str, object]
    """The section's plain keys (``base_url``, ``success_url``, ...)."""
    rules: Sequence[Mapping[str, object]] = ()
    """``[[tenants.T.payments.rules]]``, in order."""
    surcharge: Mapping[str, object] | None = None
    """``[tenants.T.payments.surcharge]`` (None: no surcharge)."""

    def toml(self, tenant: str) -> str:
        prefix = f"tenants.{tenant}.payments"
        parts = [f"[{prefix}]\n{_toml_body(self.settings)}"]
        parts += [f"[[{prefix}.rules]]\n{_toml_body(rule)}" for rule in self.rules]
        if self.surcharge is not None:
            parts.append(f"[{prefix}.surcharge]\n{_toml_body(self.surcharge)}")
        return "\n".join(parts)


def stripe_payments(sandbox: StripeSandbox, *, site: str) -> SandboxPayments:
    """Auto-pay through the local Stripe: cards charged on the due date, agreement invoices from their date,
    and a card surcharge of 2.9% + 0.30 capped at 3% (never on bank debits or debit cards).

    ``site`` is the tenant's web address (Checkout's success and cancel pages); the sandbox must be launched."""
    return SandboxPayments(
        sandbox.api_key,
        {
            "base_url": sandbox.base_url,
            "success_url": f"{site}/autopay/thanks",
            "cancel_url": f"{site}/autopay",
        },
        (
            {"name": "due-date", "on_due_date": True},
            {"name": "agreements", "days_after_issue": 0, "agreement_only": True},
        ),
        {"percent": "2.9", "fixed": "0.30", "max_percent": "3", "exempt": ["us_bank_account", "debit"]},
    )


def _toml_body(settings: Mapping[str, object]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


def write_sandbox_config(
    folder: Path,
    connections: Sequence[SandboxConnection],
    *,
    database_url: str,
    log_format: str = "json",
    extra: Mapping[str, object] | None = None,
    payments: Mapping[str, SandboxPayments] | None = None,
    dunning: Mapping[str, str] | None = None,
) -> Path:
    """A config and its credentials file; ``extra`` settings apply to every connection, ``payments`` (by
    tenant) makes those tenants take payments, ``dunning`` (by tenant) is their ``[tenants.T.dunning]`` TOML."""
    unknown = sorted(set(payments or {}) - {c.tenant for c in connections})
    if unknown:
        raise ValueError(f"payments for tenants with no connection: {', '.join(unknown)}")
    credentials = folder / "credentials.toml"
    credentials.write_text(
        "".join(
            f"[connections.{c.name}]\n"
            f"client_id = {json.dumps(c.client_id)}\nclient_secret = {json.dumps(c.client_secret)}\n"
            for c in connections
        )
        + "".join(f"[payments.{tenant}]\napi_key = {json.dumps(p.api_key)}\n" for tenant, p in (payments or {}).items())
    )
    credentials.chmod(0o600)
    lines = [
        "# Local sandboxes; written by arsync.",
        f"[database]\nurl = {json.dumps(database_url)}\n",
        f"[daemon]\nlog_format = {json.dumps(log_format)}\n",
        '[credentials]\nfile = "credentials.toml"\n',
    ]
    tenants = {c.tenant: c for c in connections}
    for tenant, first in tenants.items():
        lines.append(
            f"[tenants.{tenant}]\ndisplay_name = {json.dumps(first.tenant_name)}\n"
            f'timezone = "America/Los_Angeles"\nhome_currency = {json.dumps(first.home_currency)}\n'
        )
        for conn in (c for c in connections if c.tenant == tenant):
            settings = {**conn.settings, **(extra or {})}
            lines.append(f"[tenants.{tenant}.connections.{conn.name}]\n{_toml_body(settings)}")
        if payments and tenant in payments:
            lines.append(payments[tenant].toml(tenant))
        if dunning and tenant in dunning:
            lines.append(dunning[tenant])
    config = folder / "arsync.toml"
    config.write_text("\n".join(lines))
    return config


def sandbox_dunning(tenant: str, smtp_port: int) -> str:
    """A dunning policy for a demo tenant, its mail going to a local SMTP server on ``smtp_port``.

    The send window is always open (a demo runs at any hour); pacing keeps a day between two
    messages to one customer and caps the day at 500."""
    prefix = f"tenants.{tenant}.dunning"
    return f"""[{prefix}]
pdf_url = "https://billing.example.com/invoices/{{connection}}/{{invoice}}.pdf"
[{prefix}.window]
start = "00:00"
end = "23:59"
business_days_only = false
[{prefix}.pacing]
daily_cap = 500
min_gap_hours = 24
[{prefix}.mail]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
sender = "Accounts Receivable <ar@example.com>"
[[{prefix}.policies]]
name = "standard"
[[{prefix}.policies.steps]]
name = "upcoming"
days = -3
actions = [{{ kind = "email", template = "reminder_upcoming" }}]
[[{prefix}.policies.steps]]
name = "overdue"
days = 1
actions = [{{ kind = "email", template = "reminder_overdue" }}]
[[{prefix}.policies.steps]]
name = "late-fee"
days = 15
actions = [
  {{ kind = "late_fee", flat = "25", percent = "1.5", maximum = "150" }},
  {{ kind = "email", template = "late_fee_notice" }},
]
[[{prefix}.policies.steps]]
name = "call"
days = 30
actions = [{{ kind = "call", note = "Call the customer's accounts payable" }}]
[[{prefix}.policies.steps]]
name = "final"
days = 60
actions = [{{ kind = "suspend" }}, {{ kind = "email", template = "final_notice" }}]
"""


def authorise(app: App, name: str) -> None:
    """The authorization-code flow, with the sandbox approving at once."""
    auth = app.auth(name)
    state = secrets.token_urlsafe(16)
    answer = requests.get(auth.authorize_url(state), allow_redirects=False, timeout=10)
    tokens = auth.exchange(answer.headers["Location"], state)
    if isinstance(auth, XeroAuth):
        chosen = choose_organisation(auth.organisations(tokens.access_token), tokens.account_id)
        assert chosen is not None, "the sandbox grant reaches exactly one organisation"
        tokens = replace(tokens, account_id=chosen.tenant_id)
    app.tokens(name).save(tokens)
