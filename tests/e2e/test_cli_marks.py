"""Tags and holds from the command line, and what the auto-pay plan makes of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from arsync.cli import app
from sync.db import make_engine
from tests import collecting as L
from tests.unit.test_config import BASE, write
from tests.unit.test_config_payments import MINIMAL, PENV

runner = CliRunner()
RULE = '[[tenants.acme.payments.rules]]\nname = "on-issue"\ndays_after_issue = 0\n'


def arsync(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=PENV)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    path = write(tmp_path, BASE + MINIMAL + 'excluded_tags = ["no-autopay"]\n' + RULE)
    code, out = arsync("db", "upgrade", "--config", str(path))
    assert code == 0, out
    engine = make_engine(f"sqlite:///{tmp_path / 'arsync.db'}")
    sessions = sessionmaker(engine)
    code, out = arsync("status", "--config", str(path))  # registers the tenant and its connections
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.customer(s, "c2")
        L.invoice(s, "i1", "c1", "100.00")
        L.invoice(s, "i2", "c2", "50.00")
    engine.dispose()
    yield path


def planned(config: Path) -> tuple[set[str], dict[str, int]]:
    code, out = arsync("charge", "plan", "--config", str(config), "--date", "2026-11-22", "--format", "json")
    assert code == 0, out
    document = json.loads(out)
    return {c["invoice"] for c in document["charges"]}, document["skipped"]


def test_tags_and_holds_change_the_plan(config: Path) -> None:
    assert planned(config) == ({"i1", "i2"}, {})
    code, out = arsync("customer", "tag", "--config", str(config), "--customer", "c2", "--add", "no-autopay")
    assert (code, out.strip()) == (0, "acme-qbo:c2: no-autopay")
    code, out = arsync(
        "invoice", "hold", "--config", str(config), "--invoice", "INV-i1", "--dispute", "--reason", "hours wrong"
    )
    assert (code, out.strip()) == (0, "acme-qbo:i1 on dispute")
    assert planned(config) == (set(), {"on hold (dispute)": 1, "customer excluded from auto-pay by tag": 1})
    code, out = arsync("invoice", "release", "--config", str(config), "--invoice", "acme-qbo:i1")
    assert (code, out.strip()) == (0, "acme-qbo:i1: 1 hold(s) released")
    code, out = arsync("customer", "tag", "--config", str(config), "--customer", "c2", "--remove", "no-autopay")
    assert (code, out.strip()) == (0, "acme-qbo:c2: (no tags)")
    assert planned(config) == ({"i1", "i2"}, {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("invoice", "hold", "--invoice", "nope", "--reason", "x"), "invoice 'nope' is not in the ledger"),
        (("invoice", "hold", "--invoice", "i1", "--reason", " "), "a hold needs a reason"),
        (("invoice", "hold", "--invoice", "i1", "--reason", "x", "--until", "soon"), "--until 'soon' is not a date"),
        (("customer", "tag", "--customer", "c9", "--add", "x"), "customer 'c9' is not in the ledger"),
        (("charge", "plan", "--date", "2026-13-01"), "--date '2026-13-01' is not a date"),
        (("charge", "plan", "--tenant", "nope"), "no tenant named 'nope'"),
        (("charge", "batch", "--invoice", "i1", "--invoice", "i2", "--amount", "5"), "--amount needs exactly one"),
        (("charge", "batch", "--invoice", "i1", "--amount", "-5"), "must be more than zero"),
    ],
)
def test_bad_arguments_say_what_is_wrong(config: Path, args: tuple[str, ...], message: str) -> None:
    code, out = arsync(*args, "--config", str(config))
    assert code == 2 and message in " ".join(out.split()), out


def test_status_shows_a_payments_block_per_paying_tenant(config: Path) -> None:
    code, out = arsync("status", "--config", str(config))
    flat = " ".join(out.split())
    assert code == 0, out
    assert "acme payments" in flat
    assert "events read up to │ never read" in flat
    assert "enrolled methods │ 2 (0 setup link(s) not completed)" in flat
    assert "charged, not in ledger │ -" in flat
