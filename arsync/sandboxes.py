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


def write_sandbox_config(
    folder: Path,
    connections: Sequence[SandboxConnection],
    *,
    database_url: str,
    log_format: str = "json",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """A config and its credentials file; ``extra`` settings apply to every connection."""
    credentials = folder / "credentials.toml"
    credentials.write_text(
        "".join(
            f"[connections.{c.name}]\n"
            f"client_id = {json.dumps(c.client_id)}\nclient_secret = {json.dumps(c.client_secret)}\n"
            for c in connections
        )
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
            body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
            lines.append(f"[tenants.{tenant}.connections.{conn.name}]\n{body}")
    config = folder / "arsync.toml"
    config.write_text("\n".join(lines))
    return config


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
