"""Test helpers: a fake clock, database URLs for both stores, configs for the sandbox."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from arsync.sandboxes import quickbooks_connection, write_sandbox_config, xero_connection
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.xero.sandbox import XeroSandbox

PG_URL = os.environ.get("ARSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class FakeClock:
    """A clock tests move by hand; ``sleep`` moves it instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0, **kwargs: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds, **kwargs)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


def postgres_available() -> bool:
    try:
        engine = sa.create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def require_postgres() -> None:
    if postgres_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI and is not reachable at {PG_URL}")
    pytest.skip(f"PostgreSQL not reachable at {PG_URL}")


def postgres_schema_url() -> Iterator[str]:
    """A fresh schema per test, so parallel tests never share tables."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        yield from postgres_schema_url()


def sandbox_config(
    folder: Path, sandbox: QuickBooksSandbox, database_url: str, name: str = "acme-qbo", **extra: object
) -> Path:
    """A config file pointing one QuickBooks connection of tenant ``acme`` at a running sandbox."""
    connection = quickbooks_connection(sandbox, tenant="acme", tenant_name="Acme Plumbing", name=name)
    return write_sandbox_config(folder, [connection], database_url=database_url, extra=extra)


def xero_config(
    folder: Path, sandbox: XeroSandbox, database_url: str, name: str = "acme-xero", **extra: object
) -> Path:
    """A config file pointing one Xero connection of tenant ``acme`` at a running sandbox."""
    connection = xero_connection(sandbox, tenant="acme", tenant_name="Acme Plumbing", name=name)
    return write_sandbox_config(folder, [connection], database_url=database_url, extra=extra)
