"""Tests for arsync.config: a tenant's [payments] section and its auto-pay rules."""

from __future__ import annotations

import re
import traceback
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arsync.cli import app
from arsync.config import ConfigError, PaymentsConfig, Secret, TenantConfig, load_config
from collect.policy import METHOD_TYPES, SURCHARGE_EXEMPTIONS, AutopayPolicy, AutopayRule, SurchargePolicy
from tests.unit.test_config import BASE, ENV, EXAMPLE, by_key, edit, only_problem, problems_of, write

STRIPE_KEY = "sk_test_Pq7-payments-very-secret-key-3Lw"
PENV = {**ENV, "ARSYNC_ACME_STRIPE_KEY": STRIPE_KEY}
PAY = "tenants.acme.payments"

MINIMAL = """
[tenants.acme.payments]
api_key_env = "ARSYNC_ACME_STRIPE_KEY"
success_url = "https://acme.example.com/thanks"
cancel_url = "https://acme.example.com/billing"
"""

FULL = """
[tenants.acme.payments]
processor = "stripe"
api_key_env = "ARSYNC_ACME_STRIPE_KEY"
base_url = "http://127.0.0.1:12111/"
timeout_seconds = 20
success_url = "https://acme.example.com/thanks"
cancel_url = "https://acme.example.com/billing"
retry_days = [1, 3, 7, 14]
apply_credits = false
excluded_tags = ["no-autopay"]

[tenants.acme.payments.surcharge]
percent = "2.9"
fixed = "0.30"
max_percent = "3"
exempt = ["us_bank_account", "debit"]
description = "Card fee"

[[tenants.acme.payments.rules]]
name = "agreements-on-issue"
days_after_issue = 0
on_due_date = false
agreement_only = true
min_amount = "1.00"
max_amount = "5000"
currencies = ["USD", "CAD"]
tags_any = ["msp"]
tags_none = ["vip"]
method_types = ["us_bank_account"]

[[tenants.acme.payments.rules]]
name = "cards-when-due"
on_due_date = true
max_amount = 250
method_types = ["card"]
"""


def payments_of(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> PaymentsConfig:
    config = load_config(write(tmp_path, BASE + text), environ=PENV if environ is None else environ)
    payments = config.tenant("acme").payments
    assert payments is not None
    return payments


def full_with(old: str, new: str) -> str:
    return BASE + edit(FULL, old, new)


# ----------------------------------------------------------------------------- happy paths


def test_full_section_round_trips_into_the_policy_types(tmp_path: Path) -> None:
    payments = payments_of(FULL, tmp_path)

    assert payments == PaymentsConfig(
        processor="stripe",
        api_key=Secret(STRIPE_KEY),
        base_url="http://127.0.0.1:12111",
        timeout_seconds=20,
        success_url="https://acme.example.com/thanks",
        cancel_url="https://acme.example.com/billing",
        autopay=AutopayPolicy(
            rules=(
                AutopayRule(
                    name="agreements-on-issue",
                    days_after_issue=0,
                    on_due_date=False,
                    agreement_only=True,
                    min_amount=Decimal("1.00"),
                    max_amount=Decimal("5000"),
                    currencies=frozenset({"USD", "CAD"}),
                    tags_any=frozenset({"msp"}),
                    tags_none=frozenset({"vip"}),
                    method_types=frozenset({"us_bank_account"}),
                ),
                AutopayRule(
                    name="cards-when-due",
                    on_due_date=True,
                    max_amount=Decimal(250),
                    method_types=frozenset({"card"}),
                ),
            ),
            retry_days=(1, 3, 7, 14),
            surcharge=SurchargePolicy(
                percent=Decimal("2.9"),
                fixed=Decimal("0.30"),
                max_percent=Decimal(3),
                exempt=frozenset({"us_bank_account", "debit"}),
                description="Card fee",
            ),
            apply_credits=False,
            excluded_tags=frozenset({"no-autopay"}),
        ),
    )
    assert payments.api_key.reveal() == STRIPE_KEY
    # Decimals exactly as written, never through a float
    surcharge = payments.autopay.surcharge
    assert surcharge is not None
    assert (str(surcharge.percent), str(surcharge.fixed), str(surcharge.max_percent)) == ("2.9", "0.30", "3")
    first, second = payments.autopay.rules
    assert (str(first.min_amount), str(first.max_amount), str(second.max_amount)) == ("1.00", "5000", "250")
    assert all(isinstance(v, Decimal) for v in (first.min_amount, first.max_amount, second.max_amount))
    assert second.days_after_issue is None
    assert surcharge.amount(Decimal("100.00"), "card", "credit") == Decimal("3.00")  # 3.20 capped to 3%


def test_minimal_section_takes_the_defaults(tmp_path: Path) -> None:
    payments = payments_of(MINIMAL, tmp_path)
    assert payments.processor == "stripe"
    assert payments.base_url == "https://api.stripe.com"
    assert payments.timeout_seconds == 30
    assert payments.autopay == AutopayPolicy()
    assert payments.autopay.rules == ()  # no rules: nothing is auto-charged
    assert payments.autopay.retry_days == (1, 3, 7)
    assert payments.autopay.surcharge is None
    assert payments.autopay.apply_credits is True
    assert payments.autopay.excluded_tags == frozenset()


def test_a_tenant_without_payments_has_none(tmp_path: Path) -> None:
    (tenant,) = load_config(write(tmp_path, BASE), environ=ENV).tenants
    assert tenant.payments is None
    assert TenantConfig(name="t", display_name="T", timezone="UTC", home_currency="USD").payments is None


def test_surcharge_defaults_and_integer_amounts(tmp_path: Path) -> None:
    text = MINIMAL + "[tenants.acme.payments.surcharge]\npercent = 3\nmax_percent = 3\n"
    surcharge = payments_of(text, tmp_path).autopay.surcharge
    assert surcharge == SurchargePolicy(percent=Decimal(3), max_percent=Decimal(3))
    assert surcharge.fixed == Decimal(0)
    assert surcharge.exempt == SURCHARGE_EXEMPTIONS == frozenset({"us_bank_account", "debit", "prepaid"})
    assert surcharge.description == "Card processing surcharge"


def test_percent_above_max_percent_is_allowed_because_the_cap_applies(tmp_path: Path) -> None:
    payments = payments_of(edit(FULL, 'percent = "2.9"', 'percent = "4.5"'), tmp_path)
    surcharge = payments.autopay.surcharge
    assert surcharge is not None
    assert surcharge.amount(Decimal("100.00"), "card", "credit") == Decimal("3.00")


def test_an_empty_retry_list_means_no_retries(tmp_path: Path) -> None:
    assert payments_of(edit(FULL, "retry_days = [1, 3, 7, 14]", "retry_days = []"), tmp_path).autopay.retry_days == ()


def test_method_types_match_the_policy() -> None:
    assert frozenset({"card", "us_bank_account"}) == METHOD_TYPES


# ----------------------------------------------------------------------------- problems


R0 = f"{PAY}.rules[0]"
R1 = f"{PAY}.rules[1]"


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        # timing
        ("days_after_issue = 0\n", "", R0, "set days_after_issue (0 = from the invoice date) or on_due_date = true"),
        ("on_due_date = true\n", "on_due_date = false\n", R1, "says nothing about when to charge"),
        ("days_after_issue = 0", "days_after_issue = -1", f"{R0}.days_after_issue", "greater than or equal to 0"),
        # amounts
        (
            "max_amount = 250",
            'min_amount = "300"\nmax_amount = 250',
            f"{R1}.max_amount",
            "must be at least min_amount (300); got 250",
        ),
        ('min_amount = "1.00"', "min_amount = 1.5", f"{R0}.min_amount", "not a float"),
        ("max_amount = 250", "max_amount = 250.0", f"{R1}.max_amount", 'write 250.0 as "250.0"'),
        ('min_amount = "1.00"', 'min_amount = "-1"', f"{R0}.min_amount", "greater than or equal to 0 (got '-1')"),
        ('min_amount = "1.00"', 'min_amount = "1,000"', f"{R0}.min_amount", 'decimal number such as "12.50"'),
        ('min_amount = "1.00"', "min_amount = true", f"{R0}.min_amount", "not a boolean"),
        ('min_amount = "1.00"', "min_amount = [1]", f"{R0}.min_amount", "or an integer, not an array"),
        # surcharge
        ('percent = "2.9"', "percent = 2.9", f"{PAY}.surcharge.percent", 'write 2.9 as "2.9"'),
        ('percent = "2.9"', 'percent = "-0.1"', f"{PAY}.surcharge.percent", "greater than or equal to 0"),
        ('fixed = "0.30"', "fixed = 0.3", f"{PAY}.surcharge.fixed", 'write 0.3 as "0.3"'),
        ('fixed = "0.30"', 'fixed = "-0.30"', f"{PAY}.surcharge.fixed", "greater than or equal to 0"),
        ('max_percent = "3"', "max_percent = 3.0", f"{PAY}.surcharge.max_percent", 'write 3.0 as "3.0"'),
        ('max_percent = "3"', 'max_percent = "-3"', f"{PAY}.surcharge.max_percent", "greater than or equal to 0"),
        (
            'max_percent = "3"',
            'max_percent = "100.5"',
            f"{PAY}.surcharge.max_percent",
            "less than or equal to 100 (got '100.5')",
        ),
        ('max_percent = "3"\n', "", f"{PAY}.surcharge.max_percent", "missing required key"),
        (
            'exempt = ["us_bank_account", "debit"]',
            'exempt = ["debit", "ach"]',
            f"{PAY}.surcharge.exempt[1]",
            "must be 'us_bank_account', 'card', 'debit', 'credit' or 'prepaid' (got 'ach')",
        ),
        (
            'exempt = ["us_bank_account", "debit"]',
            'exempt = ["debit", "debit"]',
            f"{PAY}.surcharge.exempt",
            "lists debit more than once",
        ),
        ('description = "Card fee"', 'description = " "', f"{PAY}.surcharge.description", "must not be empty"),
        # rule lists and names
        (
            'name = "cards-when-due"',
            'name = "agreements-on-issue"',
            f"{R1}.name",
            "rule name 'agreements-on-issue' is already used by rules[0]; rule names must be unique within a tenant",
        ),
        ('name = "cards-when-due"\n', "", f"{R1}.name", "missing required key"),
        (
            'method_types = ["card"]',
            'method_types = ["card", "ach"]',
            f"{R1}.method_types[1]",
            "must be 'card' or 'us_bank_account' (got 'ach')",
        ),
        ('currencies = ["USD", "CAD"]', 'currencies = ["usd"]', f"{R0}.currencies[0]", "did you mean 'USD'"),
        ('currencies = ["USD", "CAD"]', 'currencies = ["US Dollar"]', f"{R0}.currencies[0]", "ISO 4217"),
        (
            'tags_none = ["vip"]',
            'tags_none = ["vip", "msp"]',
            f"{R0}.tags_none",
            "lists 'msp', which tags_any requires",
        ),
        ('tags_any = ["msp"]', 'tags_any = "msp"', f"{R0}.tags_any", "must be an array, not a string"),
        ("agreement_only = true", "agreements_only = true", f"{R0}.agreements_only", "did you mean 'agreement_only'"),
        # the section itself
        ('processor = "stripe"', 'processor = "adyen"', f"{PAY}.processor", "must be 'stripe' (got 'adyen')"),
        ("retry_days = [1, 3, 7, 14]", "retry_days = [1, 7, 3]", f"{PAY}.retry_days", "strictly increasing"),
        ("retry_days = [1, 3, 7, 14]", "retry_days = [1, 1]", f"{PAY}.retry_days", "strictly increasing"),
        ("retry_days = [1, 3, 7, 14]", "retry_days = [0, 3]", f"{PAY}.retry_days[0]", "greater than or equal to 1"),
        ("apply_credits = false", "apply_credit = false", f"{PAY}.apply_credit", "did you mean 'apply_credits'"),
        ("timeout_seconds = 20", "timeout_seconds = 0", f"{PAY}.timeout_seconds", "greater than 0"),
        ('success_url = "https://acme.example.com/thanks"\n', "", f"{PAY}.success_url", "missing required key"),
        (
            'cancel_url = "https://acme.example.com/billing"',
            'cancel_url = "acme.example.com/billing"',
            f"{PAY}.cancel_url",
            "http:// or https://",
        ),
        (
            'base_url = "http://127.0.0.1:12111/"',
            'base_url = "localhost:12111"',
            f"{PAY}.base_url",
            "http:// or https://",
        ),
        ('excluded_tags = ["no-autopay"]', 'excluded_tags = [""]', f"{PAY}.excluded_tags[0]", "must not be empty"),
        # the API key: the section must be complete
        (
            'api_key_env = "ARSYNC_ACME_STRIPE_KEY"\n',
            "",
            f"{PAY}.api_key",
            "no api_key: set api_key_env to the name of an environment variable",
        ),
        (
            'api_key_env = "ARSYNC_ACME_STRIPE_KEY"',
            'api_key_env = "ARSYNC_ACME_STRIPE_KEY_X"',
            f"{PAY}.api_key_env",
            "environment variable ARSYNC_ACME_STRIPE_KEY_X is not set",
        ),
        (
            'api_key_env = "ARSYNC_ACME_STRIPE_KEY"',
            'api_key_env = "stripe-key"',
            f"{PAY}.api_key_env",
            "NAME of an environment variable",
        ),
    ],
)
def test_each_problem_is_reported_once_at_its_key(tmp_path: Path, old: str, new: str, key: str, fragment: str) -> None:
    path = write(tmp_path, full_with(old, new))
    problem = only_problem(path, PENV)
    assert problem.file == str(path)
    assert problem.key == key
    assert fragment in problem.message
    assert STRIPE_KEY not in problem.message


def test_float_money_message_wording(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, full_with('percent = "2.9"', "percent = 2.9")), PENV)
    assert str(problem) == (
        f"{tmp_path / 'arsync.toml'}: tenants.acme.payments.surcharge.percent: must be a string or an"
        ' integer, not a float (floats are inexact for money): write 2.9 as "2.9"'
    )


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (MINIMAL + "surcharge = 5\n", f"{PAY}.surcharge", "must be a table, not an integer"),
        (MINIMAL + "rules = 5\n", f"{PAY}.rules", "must be an array, not an integer"),
        (MINIMAL.replace("[tenants.acme.payments]", "[[tenants.acme.payments]]"), PAY, "must be a table, not an array"),
        (
            MINIMAL.replace("[tenants.acme.payments]", "[tenants.acme.paymnets]"),
            "tenants.acme.paymnets",
            "did you mean 'payments'",
        ),
    ],
)
def test_misshapen_sections(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    problem = only_problem(write(tmp_path, BASE + text), PENV)
    assert problem.key == key
    assert fragment in problem.message


def test_every_payments_problem_is_reported_together(tmp_path: Path) -> None:
    text = edit(FULL, 'percent = "2.9"', "percent = 2.9")
    text = edit(text, 'name = "cards-when-due"', 'name = "agreements-on-issue"')
    text = edit(text, "max_amount = 250", 'min_amount = "300"\nmax_amount = 250')
    text = edit(text, 'method_types = ["us_bank_account"]', 'method_types = ["ach"]')
    text = edit(text, 'api_key_env = "ARSYNC_ACME_STRIPE_KEY"\n', "")
    keys = by_key(problems_of(write(tmp_path, BASE + text), PENV))
    assert set(keys) == {
        f"{PAY}.api_key",
        f"{R1}.name",
        f"{PAY}.surcharge.percent",
        f"{R0}.method_types[0]",
        f"{R1}.max_amount",
    }


def test_config_check_reports_payments_problems(tmp_path: Path) -> None:
    path = write(tmp_path, full_with("max_amount = 250", 'min_amount = "300"\nmax_amount = 250'))
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)], env=PENV)
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 1
    assert f"{path}: {R1}.max_amount: must be at least min_amount (300); got 250" in out


# ----------------------------------------------------------------------------- secrets


def test_the_api_key_is_never_printed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + FULL), environ=PENV)
    payments = config.tenant("acme").payments
    assert payments is not None
    for text in (repr(config), str(config), repr(payments), str(payments), f"{payments.api_key}"):
        assert STRIPE_KEY not in text
    assert "api_key=********" in repr(payments)


def test_an_inline_api_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    text = full_with('api_key_env = "ARSYNC_ACME_STRIPE_KEY"', f'api_key = "{STRIPE_KEY}"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=PENV)
    (problem,) = caught.value.problems
    assert problem.key == f"{PAY}.api_key"
    assert "secrets may not be written in the config file" in problem.message
    assert "[payments.acme]" in problem.message
    assert STRIPE_KEY not in "".join(traceback.format_exception(caught.value))


def test_a_key_pasted_into_api_key_env_is_not_echoed(tmp_path: Path) -> None:
    text = full_with('api_key_env = "ARSYNC_ACME_STRIPE_KEY"', f'api_key_env = "{STRIPE_KEY}"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=PENV)
    (problem,) = caught.value.problems
    assert problem.key == f"{PAY}.api_key_env"
    assert STRIPE_KEY not in "".join(traceback.format_exception(caught.value))


def test_empty_and_publishable_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + FULL)
    problem = only_problem(path, {**PENV, "ARSYNC_ACME_STRIPE_KEY": " "})
    assert (problem.key, problem.message) == (
        f"{PAY}.api_key_env",
        "environment variable ARSYNC_ACME_STRIPE_KEY is empty",
    )

    publishable = "pk_test_Pq7publishable3Lw"
    problem = only_problem(path, {**PENV, "ARSYNC_ACME_STRIPE_KEY": publishable})
    assert problem.key == f"{PAY}.api_key_env"
    assert "publishable key (pk_...)" in problem.message
    assert publishable not in problem.message


# ----------------------------------------------------------------------------- credentials file


def _from_credentials_file(tmp_path: Path, credentials: str) -> tuple[Path, Path]:
    creds = write(tmp_path, credentials, "credentials.toml")
    text = edit(BASE, "[tenants.acme]", '[credentials]\nfile = "credentials.toml"\n\n[tenants.acme]')
    text += edit(FULL, 'api_key_env = "ARSYNC_ACME_STRIPE_KEY"\n', "")
    return write(tmp_path, text), creds


def test_the_api_key_from_the_credentials_file(tmp_path: Path) -> None:
    path, _ = _from_credentials_file(tmp_path, f'[payments.acme]\napi_key = "{STRIPE_KEY}"\n')
    payments = load_config(path, environ=ENV).tenant("acme").payments
    assert payments is not None
    assert payments.api_key.reveal() == STRIPE_KEY


def test_the_environment_wins_over_the_credentials_file(tmp_path: Path) -> None:
    write(tmp_path, '[payments.acme]\napi_key = "sk_test_from_file"\n', "credentials.toml")
    text = edit(BASE, "[tenants.acme]", '[credentials]\nfile = "credentials.toml"\n\n[tenants.acme]') + FULL
    payments = load_config(write(tmp_path, text), environ=PENV).tenant("acme").payments
    assert payments is not None
    assert payments.api_key.reveal() == STRIPE_KEY


def test_credentials_file_without_the_tenants_entry(tmp_path: Path) -> None:
    path, creds = _from_credentials_file(tmp_path, "")
    problem = only_problem(path, ENV)
    assert problem.file == str(creds)
    assert problem.key == "payments.acme.api_key"
    assert f"tenant 'acme' has a payments section with no api_key_env in {path}" in problem.message


def test_credentials_file_payments_problems_name_that_file(tmp_path: Path) -> None:
    path, creds = _from_credentials_file(
        tmp_path,
        f'[payments.acme]\napikey = "{STRIPE_KEY}"\n[payments.acne]\napi_key = "{STRIPE_KEY}"\n'
        f'[payment.acme]\napi_key = "{STRIPE_KEY}"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENV)
    problems = caught.value.problems
    assert {p.file for p in problems} == {str(creds)}
    keys = by_key(problems)
    assert set(keys) == {"payment", "payments.acme.apikey", "payments.acne"}
    assert "did you mean 'payments'" in keys["payment"]
    assert "did you mean 'api_key'" in keys["payments.acme.apikey"]
    assert "no tenant named 'acne'" in keys["payments.acne"] and "did you mean 'acme'" in keys["payments.acne"]
    assert STRIPE_KEY not in "".join(traceback.format_exception(caught.value))


def test_credentials_entry_for_a_tenant_without_payments(tmp_path: Path) -> None:
    write(tmp_path, f'[payments.acme]\napi_key = "{STRIPE_KEY}"\n', "credentials.toml")
    text = edit(BASE, "[tenants.acme]", '[credentials]\nfile = "credentials.toml"\n\n[tenants.acme]')
    problem = only_problem(write(tmp_path, text), ENV)
    assert problem.key == "payments.acme"
    assert "tenant 'acme' has no payments section ([tenants.acme.payments])" in problem.message


# ----------------------------------------------------------------------------- the example file


def _uncommented_example() -> str:
    """config.example.toml with its commented-out payments block for acme switched on."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    start = lines.index("# [tenants.acme.payments]\n")
    end = start
    while end < len(lines) and lines[end].startswith("#"):
        end += 1
    block = [re.sub(r"^# ?", "", line) for line in lines[start:end]]
    return "".join(lines[:start] + block + lines[end:])


def test_the_example_payments_block_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = _uncommented_example()
    names = re.findall(r'^\s*(?:client_(?:id|secret)|api_key)_env\s*=\s*"([A-Z0-9_]+)"', text, re.M)
    environ = {name: f"dummy-{name.lower()}" for name in names}
    assert "ARSYNC_ACME_STRIPE_KEY" in environ
    path = write(tmp_path, text.replace('url = "sqlite:///arsync.db"', f'url = "sqlite:///{tmp_path}/a.db"'))

    payments = load_config(path, environ=environ).tenant("acme").payments

    assert payments is not None
    assert payments.api_key.reveal() == "dummy-arsync_acme_stripe_key"
    assert payments.base_url == "https://api.stripe.com"
    policy = payments.autopay
    assert [rule.name for rule in policy.rules] == ["agreements-on-issue", "cards-when-due"]
    assert policy.surcharge is not None and policy.surcharge.max_percent == Decimal(3)
    assert policy.retry_days == (1, 3, 7)
    # the file as shipped (block commented out) still has no payments
    assert load_config(EXAMPLE, environ=environ).tenant("acme").payments is None


@pytest.mark.parametrize(
    ("line", "key"),
    [("charge_hour = 24", f"{PAY}.charge_hour"), ("follow_interval_minutes = 0", f"{PAY}.follow_interval_minutes")],
)
def test_schedule_keys_are_bounded(tmp_path: Path, line: str, key: str) -> None:
    problem = only_problem(write(tmp_path, BASE + MINIMAL + line + "\n"), PENV)
    assert problem.key == key


def test_schedule_defaults(tmp_path: Path) -> None:
    payments = payments_of(MINIMAL, tmp_path)
    assert (payments.charge_hour, payments.follow_interval_minutes) == (9, 15)


WRITEBACK = """
[tenants.acme.connections.acme-qbo.writeback]
clearing_account = "35"
bank_account = "36"
fee_account = "54"
"""


def test_a_connection_names_its_write_back_accounts(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + WRITEBACK), environ=PENV)
    writeback = config.connection("acme-qbo").writeback
    assert writeback is not None
    assert (writeback.clearing_account, writeback.bank_account, writeback.fee_account) == ("35", "36", "54")
    assert load_config(write(tmp_path, BASE), environ=PENV).connection("acme-qbo").writeback is None


def test_write_back_names_the_refund_account_and_item_when_partial_refunds_are_booked(tmp_path: Path) -> None:
    text = BASE + WRITEBACK + 'refund_account = "48"\nrefund_item = "7"\n'
    writeback = load_config(write(tmp_path, text), environ=PENV).connection("acme-qbo").writeback
    assert writeback is not None
    assert (writeback.refund_account, writeback.refund_item) == ("48", "7")
    default = load_config(write(tmp_path, BASE + WRITEBACK), environ=PENV).connection("acme-qbo").writeback
    assert default is not None and (default.refund_account, default.refund_item) == (None, None)
    problem = only_problem(write(tmp_path, BASE + WRITEBACK + 'refund_item = " "\n'), PENV)
    assert problem.key == "tenants.acme.connections.acme-qbo.writeback.refund_item"


def test_the_allocation_order_and_fee_items_are_read_and_checked(tmp_path: Path) -> None:
    default = load_config(write(tmp_path, BASE + WRITEBACK), environ=PENV).connection("acme-qbo").writeback
    assert default is not None
    assert (default.allocation_order, default.late_fee_items, default.collection_fee_items) == (
        ("collection_fees", "late_fees", "principal"),
        (),
        (),
    )
    text = (
        BASE
        + WRITEBACK
        + 'allocation_order = ["principal", "collection_fees", "late_fees"]\n'
        + 'late_fee_items = ["12"]\ncollection_fee_items = ["14", "15"]\n'
    )
    writeback = load_config(write(tmp_path, text), environ=PENV).connection("acme-qbo").writeback
    assert writeback is not None
    assert (writeback.allocation_order, writeback.late_fee_items, writeback.collection_fee_items) == (
        ("principal", "collection_fees", "late_fees"),
        ("12",),
        ("14", "15"),
    )
    key = "tenants.acme.connections.acme-qbo.writeback"
    for bad, where, words in (
        ('allocation_order = ["principal", "principal", "late_fees"]', "allocation_order", "more than once"),
        ('allocation_order = ["principal", "late_fees"]', "allocation_order", "missing: collection_fees"),
        ('allocation_order = ["interest", "late_fees", "principal"]', "allocation_order", ""),
        ('late_fee_items = ["12"]\ncollection_fee_items = ["12"]', "collection_fee_items", "also in late_fee_items"),
        ('late_fee_items = "12"', "late_fee_items", ""),
    ):
        problem = only_problem(write(tmp_path, BASE + WRITEBACK + bad + "\n"), PENV)
        assert problem.key.startswith(f"{key}.{where}"), (bad, problem)
        assert words in problem.message, (bad, problem.message)


def test_write_back_names_where_late_fees_and_agency_fees_are_booked(tmp_path: Path) -> None:
    text = (
        BASE
        + WRITEBACK
        + 'late_fee_item = "7"\nlate_fee_account = "260"\n'
        + 'collections_fee_account = "58"\ncollections_vendor = "61"\n'
    )
    writeback = load_config(write(tmp_path, text), environ=PENV).connection("acme-qbo").writeback
    assert writeback is not None
    assert (
        writeback.late_fee_item,
        writeback.late_fee_account,
        writeback.collections_fee_account,
        writeback.collections_vendor,
    ) == ("7", "260", "58", "61")
    default = load_config(write(tmp_path, BASE + WRITEBACK), environ=PENV).connection("acme-qbo").writeback
    assert default is not None
    assert (
        default.late_fee_item,
        default.late_fee_account,
        default.collections_fee_account,
        default.collections_vendor,
    ) == (None, None, None, None)
    key = "tenants.acme.connections.acme-qbo.writeback"
    for bad, where, words in (
        ('late_fee_item = " "', "late_fee_item", ""),
        ('collections_vendor = ""', "collections_vendor", ""),
        ("collections_fee_account = 58", "collections_fee_account", ""),
        ('collection_fee_items = ["7"]\nlate_fee_item = "7"', "late_fee_item", "also in collection_fee_items"),
    ):
        problem = only_problem(write(tmp_path, BASE + WRITEBACK + bad + "\n"), PENV)
        assert problem.key == f"{key}.{where}", (bad, problem)
        assert words in problem.message, (bad, problem.message)


def test_a_write_back_section_needs_every_account(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, BASE + edit(WRITEBACK, 'fee_account = "54"\n', "")), PENV)
    assert problem.key == "tenants.acme.connections.acme-qbo.writeback.fee_account"
