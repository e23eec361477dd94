"""The command line, run as a user runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from arsync.cli import app
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.seed import seed_company
from connectors.xero.sandbox import XeroSandbox
from sync.db import make_engine
from sync.models import Invoice
from tests.support import sandbox_config

runner = CliRunner()


@pytest.fixture
def sandbox() -> Iterator[QuickBooksSandbox]:
    with QuickBooksSandbox() as box:
        box.start()
        yield box


def arsync(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_config_check_names_every_bad_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "arsync.toml"
    config.write_text(
        """[tenants.acme]
display_name = "Acme"
timezone = "Mars/Olympus"
home_currency = "USD"

[tenants.acme.connections.acme-qbo]
kind = "quickbooks"
redirect_uri = "https://example.test/cb"
client_id_env = "NOT_SET_ANYWHERE_X"
client_secret_env = "NOT_SET_ANYWHERE_Y"
sync_intervall_minutes = 5
"""
    )
    code, out = arsync("config", "check", "--config", str(config))
    assert code == 1
    assert f"{config}: tenants.acme.timezone" in out
    assert "tenants.acme.connections.acme-qbo.sync_intervall_minutes" in out and "sync_interval_minutes" in out
    assert "NOT_SET_ANYWHERE_Y" in out


def test_commands_refuse_an_unmigrated_database_and_say_how_to_fix_it(
    tmp_path: Path, sandbox: QuickBooksSandbox
) -> None:
    config = sandbox_config(tmp_path, sandbox, f"sqlite:///{tmp_path / 'ledger.db'}")
    code, out = arsync("sync", "--config", str(config))
    assert code == 2 and "arsync db upgrade" in out
    code, out = arsync("db", "upgrade", "--config", str(config))
    assert code == 0 and "revision" in out


def test_connect_sync_status_backfill(tmp_path: Path, sandbox: QuickBooksSandbox) -> None:
    from datetime import date

    seed_company(sandbox, customers=20, invoices=150, today=date.today())
    db = tmp_path / "ledger.db"
    config = str(sandbox_config(tmp_path, sandbox, f"sqlite:///{db}"))
    assert arsync("db", "upgrade", "--config", config)[0] == 0

    code, out = arsync("sync", "--config", config)
    assert code == 1 and "arsync connect acme-qbo" in out

    code, out = arsync(
        "connect", "acme-qbo", "--config", config, "--answer", "https://example.test/cb?error=access_denied"
    )
    assert code == 2 and "access_denied" in out
    authorize = runner.invoke(app, ["connect", "acme-qbo", "--config", config], input="\n")
    url = next(line for line in authorize.output.splitlines() if line.startswith("http"))
    redirect = requests.get(url, allow_redirects=False, timeout=10).headers["Location"]
    code, out = arsync("connect", "acme-qbo", "--config", config, "--answer", redirect)
    assert code == 2 and "state" in out  # a fresh state was issued for this attempt: the old redirect is refused
    query = {k: v for k, v in parse_qs(urlparse(redirect).query).items() if k != "state"}
    without_state = urlparse(redirect)._replace(query=urlencode(query, doseq=True)).geturl()
    code, out = arsync("connect", "acme-qbo", "--config", config, "--answer", without_state)
    assert code == 0 and "connected to company" in out

    code, out = arsync("sync", "--config", config)
    assert code == 0, out
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Invoice)).scalar_one() == sandbox.count("Invoice")
    engine.dispose()

    code, out = arsync("status", "--config", config)
    assert code == 0 and "acme-qbo" in out and f"invoice: {sandbox.count('Invoice')}" in out

    code, out = arsync("backfill", "--config", config, "--connection", "acme-qbo", "--since", "2020-01-01")
    assert code == 0 and "0 written" in out
    code, out = arsync("backfill", "--config", config, "--connection", "acme-qbo", "--since", "01/02/2024")
    assert code == 2 and "--since" in out and "YYYY-MM-DD" in out
    code, out = arsync("sync", "--config", config, "--connection", "nope")
    assert code == 2 and "acme-qbo" in out


def test_xero_connect_picks_among_several_organisations(tmp_path: Path) -> None:
    from sync.models import Connection
    from tests.support import xero_config

    tenants = [
        ("1f6d3e52-0c55-4b9a-9d1c-7a8f1b2c3d4e", "North Ltd"),
        ("9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", "South Ltd"),
    ]
    with XeroSandbox(tenants=tenants) as box:
        box.start()
        db = tmp_path / "ledger.db"
        config = str(xero_config(tmp_path, box, f"sqlite:///{db}"))
        assert arsync("db", "upgrade", "--config", config)[0] == 0

        def redirect() -> str:
            first = runner.invoke(app, ["connect", "acme-xero", "--config", config], input="\n")
            url = next(line for line in first.output.splitlines() if line.startswith("http"))
            location = requests.get(url, allow_redirects=False, timeout=10).headers["Location"]
            query = {k: v for k, v in parse_qs(urlparse(location).query).items() if k != "state"}
            return urlparse(location)._replace(query=urlencode(query, doseq=True)).geturl()

        chosen = runner.invoke(app, ["connect", "acme-xero", "--config", config, "--answer", redirect()], input="2\n")
        assert chosen.exit_code == 0, chosen.output
        assert "North Ltd" in chosen.output and "South Ltd" in chosen.output
        engine = make_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            assert conn.execute(sa.select(Connection.account_id)).scalar_one() == tenants[1][0]

        code, out = arsync(
            "connect", "acme-xero", "--config", config, "--answer", redirect(), "--organisation", "north ltd"
        )
        assert code == 0, out
        with engine.connect() as conn:
            assert conn.execute(sa.select(Connection.account_id)).scalar_one() == tenants[0][0]
        code, out = arsync("connect", "acme-xero", "--config", config, "--answer", redirect(), "--organisation", "West")
        assert code == 2 and "North Ltd" in out
        engine.dispose()
