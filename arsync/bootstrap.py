"""Wiring: the one place that builds everything and passes it down."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from arsync.clock import real_sleep, utc_now
from arsync.collecting import Collector
from arsync.config import Config, QuickBooksConnectionConfig, TenantConfig, XeroConnectionConfig, load_config
from arsync.dunning import Dunner
from arsync.reconciling import Reconciler
from connectors.base import Clock, Entity, PaymentProcessor, Sleeper
from connectors.http import RateBudget
from connectors.quickbooks.client import QuickBooksAuth, QuickBooksSettings, QuickBooksSource
from connectors.stripe import StripeProcessor
from connectors.xero.client import XeroAuth, XeroSettings, XeroSource
from reconcile.echoes import recognise_echoes
from sync.db import make_engine, require_migrated
from sync.engine import PageObserver, SyncEngine, SyncPolicy
from sync.models import Connection, Tenant
from sync.tokens import DatabaseTokenStore

Source = QuickBooksSource | XeroSource


@dataclass
class App:
    config: Config
    engine: sa.Engine
    sessions: sessionmaker[Session]
    clock: Clock
    sleeper: Sleeper
    stop: threading.Event = field(default_factory=threading.Event)
    sources: dict[str, Source] = field(default_factory=dict)
    app_budgets: dict[str, RateBudget] = field(default_factory=dict)
    processors: dict[str, PaymentProcessor] = field(default_factory=dict)
    """Per tenant, its payment processor."""
    """Per OAuth app (client id): Xero's limit across all of an app's organisations."""

    def require_migrated(self) -> None:
        require_migrated(self.engine)

    def register(self) -> None:
        """Make the ledger's tenant and connection rows match the config."""
        with self.sessions.begin() as session:
            for tenant in self.config.tenants:
                row = session.get(Tenant, tenant.name)
                if row is None:
                    row = Tenant(id=tenant.name, display_name=tenant.display_name)
                    session.add(row)
                row.display_name = tenant.display_name
                row.timezone = tenant.timezone
                row.home_currency = tenant.home_currency
                session.flush()
                for conn in tenant.connections:
                    existing = session.get(Connection, conn.name)
                    if existing is None:
                        existing = Connection(id=conn.name, tenant_id=tenant.name, kind=conn.kind)
                        session.add(existing)
                    existing.tenant_id = tenant.name
                    existing.kind = conn.kind
                    account = conn.realm_id if isinstance(conn, QuickBooksConnectionConfig) else conn.xero_tenant_id
                    if account:
                        existing.account_id = account

    def quickbooks_settings(self, conn: QuickBooksConnectionConfig) -> QuickBooksSettings:
        tenant = next(t for t in self.config.tenants if t.name == conn.tenant)
        return QuickBooksSettings(
            connection=conn.name,
            client_id=conn.client_id.reveal(),
            client_secret=conn.client_secret.reveal(),
            redirect_uri=conn.redirect_uri,
            api_base=conn.api_base,
            discovery=conn.discovery,
            token_url=conn.token_url,
            realm_id=conn.realm_id,
            minor_version=conn.minor_version,
            timeout=float(conn.timeout_seconds),
            per_second=conn.rate_limit.per_second,
            per_minute=conn.rate_limit.per_minute,
            concurrent=conn.rate_limit.concurrent,
            home_currency=tenant.home_currency,
            entities=tuple(Entity(e) for e in conn.entities),
        )

    def xero_settings(self, conn: XeroConnectionConfig) -> XeroSettings:
        return XeroSettings(
            connection=conn.name,
            client_id=conn.client_id.reveal(),
            client_secret=conn.client_secret.reveal(),
            redirect_uri=conn.redirect_uri,
            api_base=conn.api_base,
            identity_base=conn.identity_base,
            token_url=conn.token_endpoint,
            authorize_url=conn.authorize_endpoint,
            scopes=conn.scopes,
            tenant_id=conn.xero_tenant_id,
            timeout=float(conn.timeout_seconds),
            per_minute=conn.rate_limit.per_minute,
            per_day=conn.rate_limit.per_day,
            concurrent=conn.rate_limit.concurrent,
            page_size=conn.page_size,
            entities=tuple(Entity(e) for e in conn.entities),
        )

    def auth(self, name: str) -> QuickBooksAuth | XeroAuth:
        conn = self.config.connection(name)
        if isinstance(conn, XeroConnectionConfig):
            return XeroAuth(self.xero_settings(conn), self.clock, self.sleeper)
        return QuickBooksAuth(self.quickbooks_settings(conn), self.clock)

    def tokens(self, name: str) -> DatabaseTokenStore:
        return DatabaseTokenStore(self.sessions, name)

    def source(self, name: str) -> Source:
        """The connection's source, kept for the app's life so its rate budgets span runs."""
        if name not in self.sources:
            conn = self.config.connection(name)
            self.sources[name] = self._build_source(conn)
        return self.sources[name]

    def _build_source(self, conn: QuickBooksConnectionConfig | XeroConnectionConfig) -> Source:
        tokens = self.tokens(conn.name)
        if isinstance(conn, XeroConnectionConfig):
            settings = self.xero_settings(conn)
            shared = self.app_budgets.setdefault(
                settings.client_id,
                RateBudget(self.clock, self.sleeper, per_minute=conn.rate_limit.app_per_minute),
            )
            return XeroSource(settings, tokens, self.clock, self.sleeper, app_budget=shared)
        qbo = self.quickbooks_settings(conn)
        return QuickBooksSource(qbo, tokens, self.clock, self.sleeper, QuickBooksAuth(qbo, self.clock))

    def collector(self, tenant: str | None = None) -> Collector:
        """The tenant's collecting (the only tenant with payments configured when none is named)."""
        chosen = self._payments_tenant(tenant)
        assert chosen.payments is not None
        if chosen.name not in self.processors:
            payments = chosen.payments
            self.processors[chosen.name] = StripeProcessor(
                payments.api_key.reveal(), base_url=payments.base_url, timeout=payments.timeout_seconds
            )
        owner = f"{socket.gethostname()}:{os.getpid()}"
        return Collector(
            self.sessions, chosen, chosen.payments, self.processors[chosen.name], self.clock, owner, self.stop.is_set
        )

    def dunner(self, tenant: str | None = None) -> Dunner:
        """The tenant's dunning (the only tenant with a dunning section when none is named)."""
        duns = [t for t in self.config.tenants if t.dunning is not None]
        if tenant is not None:
            chosen = self.config.tenant(tenant)
            if chosen.dunning is None:
                raise KeyError(f"tenant {tenant!r} has no [tenants.{tenant}.dunning] section: nothing is dunned")
        elif len(duns) == 1:
            chosen = duns[0]
        elif not duns:
            raise KeyError("no tenant has a dunning section: configure [tenants.T.dunning]")
        else:
            raise KeyError(f"several tenants dun ({', '.join(t.name for t in duns)}): name one with --tenant")
        assert chosen.dunning is not None
        pay_url = self.collector(chosen.name).pay_url if chosen.payments is not None else None
        owner = f"{socket.gethostname()}:{os.getpid()}"
        return Dunner(self.sessions, chosen, chosen.dunning, self.clock, owner, pay_url=pay_url, stop=self.stop.is_set)

    def reconciler(self, tenant: str | None = None) -> Reconciler:
        """The tenant's write-back (the only tenant with write-back configured when none is named)."""
        chosen = self._writeback_tenant(tenant)
        writers = {c.name: self.source(c.name) for c in chosen.connections if c.writeback is not None}
        owner = f"{socket.gethostname()}:{os.getpid()}"
        return Reconciler(self.sessions, chosen, writers, self.clock, owner, self.stop.is_set)

    def _writeback_tenant(self, name: str | None) -> TenantConfig:
        writing = [t for t in self.config.tenants if any(c.writeback is not None for c in t.connections)]
        if name is not None:
            tenant = self.config.tenant(name)
            if tenant not in writing:
                raise KeyError(f"tenant {name!r} has no connection with a [writeback] section: nothing is written")
            return tenant
        if len(writing) == 1:
            return writing[0]
        if not writing:
            raise KeyError("no connection has a writeback section: configure [tenants.T.connections.C.writeback]")
        raise KeyError(f"several tenants write back ({', '.join(t.name for t in writing)}): name one with --tenant")

    def _payments_tenant(self, name: str | None) -> TenantConfig:
        with_payments = [t for t in self.config.tenants if t.payments is not None]
        if name is not None:
            tenant = self.config.tenant(name)
            if tenant.payments is None:
                raise KeyError(f"tenant {name!r} has no [tenants.{name}.payments] section: it takes no payments")
            return tenant
        if len(with_payments) == 1:
            return with_payments[0]
        if not with_payments:
            raise KeyError("no tenant has a payments section: configure [tenants.NAME.payments] first")
        names = ", ".join(t.name for t in with_payments)
        raise KeyError(f"several tenants take payments ({names}): name one with --tenant")

    def sync_engine(self, name: str, on_page: PageObserver | None = None) -> SyncEngine:
        conn = self.config.connection(name)
        policy = SyncPolicy(
            overlap=timedelta(seconds=conn.overlap_seconds),
            delete_guard_ratio=conn.delete_guard_ratio,
        )
        tenant = conn.tenant

        def recognise(session: Session) -> None:
            recognise_echoes(session, tenant)

        return SyncEngine(
            self.sessions, self.clock, policy=policy, stop=self.stop, on_page=on_page, after_run=recognise
        )


def build(config: Config, *, clock: Clock | None = None, sleeper: Sleeper | None = None) -> App:
    engine = make_engine(config.database.url)
    return App(
        config=config,
        engine=engine,
        sessions=sessionmaker(engine, expire_on_commit=False),
        clock=clock or utc_now,
        sleeper=sleeper or real_sleep,
    )


def bootstrap(config_path: Path, *, clock: Clock | None = None, sleeper: Sleeper | None = None) -> App:
    """Load and validate the config, then build the app around it."""
    return build(load_config(config_path), clock=clock, sleeper=sleeper)
