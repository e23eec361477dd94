"""Tests for arsync.config_dunning: a tenant's [dunning] section read into the policy types."""

from __future__ import annotations

import re
import traceback
from datetime import time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from arsync.config import ConfigError, Secret, load_config
from arsync.config_dunning import ACTION_KINDS, DunningConfig, MailConfig, SmsConfig, packaged_templates
from collect.dunning_policy import (
    CallTaskAction,
    CollectionsAction,
    CollectionsSettings,
    CustomerFacts,
    DunningPolicy,
    EmailAction,
    LateFeeAction,
    Policy,
    Segment,
    SmsAction,
    StatementAction,
    Step,
    StepConditions,
    SuspendAction,
    WebhookTarget,
)
from collect.mail import TEMPLATE_NAMES, Branding, MailSettings
from collect.send_window import Pacing, SendWindow
from tests.unit.test_config import BASE, ENV, EXAMPLE, by_key, edit, only_problem, problems_of, write

SMTP_PASSWORD = "Smtp-pa55word-very-secret-Qx1"
TWILIO_TOKEN = "twilio-auth-token-very-secret-7Hd"
SUSPEND_SECRET = "whsec-suspend-very-secret-Lm4"
AGENCY_SECRET = "whsec-agency-very-secret-Vb9"
SECRETS = (SMTP_PASSWORD, TWILIO_TOKEN, SUSPEND_SECRET, AGENCY_SECRET)
DENV = {
    **ENV,
    "ARSYNC_ACME_SMTP_PASSWORD": SMTP_PASSWORD,
    "ARSYNC_ACME_TWILIO_TOKEN": TWILIO_TOKEN,
    "ARSYNC_ACME_SUSPEND_SECRET": SUSPEND_SECRET,
    "ARSYNC_ACME_AGENCY_SECRET": AGENCY_SECRET,
}
DUN = "tenants.acme.dunning"
P0 = f"{DUN}.policies[0]"
P1 = f"{DUN}.policies[1]"
SID = "AC0123456789abcdef0123456789abcdef"
# TOML inline tables are one line; this one is long.
LATE_FEE = (
    '{ kind = "late_fee", flat = "25", percent = "1.5", minimum = "10", maximum = "200", grace_days = 5,'
    ' compound = false, booking = "line", description = "Late payment fee" }'
)

FULL = f"""
[tenants.acme.dunning]
paused = false
run_hour = 7
reset_on_partial_payment = false
autopay_grace_days = 2
plan_reminder_days = 4
summary = "weekly"
pdf_url = "https://billing.example.com/invoices/{{connection}}/{{invoice}}.pdf"
promise_broken = [{{ kind = "email", template = "promise_broken" }}, {{ kind = "suspend" }}]

[tenants.acme.dunning.window]
start = "08:30"
end = "17:00"
business_days_only = true
country = "US"
subdivision = "NY"

[tenants.acme.dunning.pacing]
daily_cap = 500
min_gap_hours = 48

[tenants.acme.dunning.suspension_webhook]
url = "https://psa.example.com/hooks/credit-hold"
secret_env = "ARSYNC_ACME_SUSPEND_SECRET"

[tenants.acme.dunning.collections]
eligible_after_days = 45
agency_name = "Northwind Recovery"
email = "intake@agency.example"
upfront_percent = "1"
success_percent = "22.5"

[tenants.acme.dunning.collections.webhook]
url = "https://agency.example/api/placements"
secret_env = "ARSYNC_ACME_AGENCY_SECRET"

[tenants.acme.dunning.mail]
host = "smtp.example.com"
port = 2525
security = "starttls"
username = "billing@acme.example"
password_env = "ARSYNC_ACME_SMTP_PASSWORD"
sender = "Acme Billing <billing@acme.example>"
reply_to = "ar@acme.example"
unsubscribe_url = "https://billing.acme.example/unsubscribe/{{token}}"
unsubscribe_mailto = "unsubscribe@acme.example"
timeout_seconds = 20

[tenants.acme.dunning.branding]
company_name = "Acme Ltd"
logo_url = "https://acme.example/logo.png"
accent_color = "#336699"
footer = "Acme Ltd, 1 Main St"
support_email = "ar@acme.example"
template_dir = "templates/acme"

[tenants.acme.dunning.sms]
provider = "twilio"
account_sid = "{SID}"
auth_token_env = "ARSYNC_ACME_TWILIO_TOKEN"
from_number = "+15551234567"
base_url = "http://127.0.0.1:8099/"

[[tenants.acme.dunning.policies]]
name = "standard"

[tenants.acme.dunning.policies.segment]
tags_any = ["msp"]
tags_none = ["vip"]
currencies = ["USD"]
min_balance = "0"
max_balance = "100000"
risk_levels = ["low", "medium"]
autopay = false

[[tenants.acme.dunning.policies.steps]]
name = "first-overdue"
days = 1
anchor = "due"
actions = [
  {{ kind = "email", template = "reminder_overdue" }},
  {LATE_FEE},
  {{ kind = "statement" }},
  {{ kind = "sms", template = "reminder_overdue" }},
]

[tenants.acme.dunning.policies.steps.conditions]
min_balance = "50"
min_unpaid_invoices = 2
tags_any = []
tags_none = ["disputed"]
decline_codes = ["insufficient_funds"]

[[tenants.acme.dunning.policies.steps]]
name = "final-notice"
days = 14
anchor = "previous"
actions = [
  {{ kind = "email", template = "acme_final" }},
  {{ kind = "late_fee", percent = 2, booking = "invoice" }},
  {{ kind = "call", note = "Ask for a date" }},
  {{ kind = "suspend", tag = "on-hold" }},
  {{ kind = "collections", submit = true }},
]

[[tenants.acme.dunning.policies]]
name = "high-risk"

[tenants.acme.dunning.policies.segment]
risk_levels = ["high"]

[[tenants.acme.dunning.policies.steps]]
name = "upcoming"
days = -3
actions = [{{ kind = "email", template = "reminder_upcoming" }}]

[[tenants.acme.dunning.policies.steps]]
name = "due"
days = 0
actions = [{{ kind = "statement", template = "statement" }}]

[[tenants.acme.dunning.policies.steps]]
name = "chase"
days = 7
anchor = "previous"
actions = [{{ kind = "call" }}]

[[tenants.acme.dunning.policies.steps]]
name = "escalate"
days = 30
actions = [{{ kind = "collections" }}]
"""


def tenant_templates(folder: Path, *names: str) -> Path:
    """``folder/templates/acme`` holding a complete template for each of ``names``."""
    where = folder / "templates" / "acme"
    where.mkdir(parents=True, exist_ok=True)
    for name in names:
        for part in (".subject.txt", ".txt", ".html"):
            (where / f"{name}{part}").write_text(f"{name}{part}\n", encoding="utf-8")
    return where


def config_file(tmp_path: Path, text: str) -> Path:
    tenant_templates(tmp_path, "acme_final")
    return write(tmp_path, BASE + text)


def dunning_of(tmp_path: Path, text: str = FULL, environ: dict[str, str] | None = None) -> DunningConfig:
    config = load_config(config_file(tmp_path, text), environ=DENV if environ is None else environ)
    dunning = config.tenant("acme").dunning
    assert dunning is not None
    return dunning


def problem_at(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    problem = only_problem(config_file(tmp_path, text), DENV if environ is None else environ)
    for secret in SECRETS:
        assert secret not in str(problem)
    return problem.key, problem.message


# ----------------------------------------------------------------------------- happy paths


def test_full_section_round_trips_into_the_policy_types(tmp_path: Path) -> None:
    dunning = dunning_of(tmp_path)

    standard = Policy(
        name="standard",
        segment=Segment(
            tags_any=frozenset({"msp"}),
            tags_none=frozenset({"vip"}),
            currencies=frozenset({"USD"}),
            min_balance=Decimal(0),
            max_balance=Decimal(100000),
            risk_levels=frozenset({"low", "medium"}),
            autopay=False,
        ),
        steps=(
            Step(
                name="first-overdue",
                days=1,
                anchor="due",
                conditions=StepConditions(
                    min_balance=Decimal(50),
                    min_unpaid_invoices=2,
                    tags_none=frozenset({"disputed"}),
                    decline_codes=frozenset({"insufficient_funds"}),
                ),
                actions=(
                    EmailAction(template="reminder_overdue"),
                    LateFeeAction(
                        flat=Decimal(25),
                        percent=Decimal("1.5"),
                        minimum=Decimal(10),
                        maximum=Decimal(200),
                        grace_days=5,
                        compound=False,
                        booking="line",
                        description="Late payment fee",
                    ),
                    StatementAction(),
                    SmsAction(template="reminder_overdue"),
                ),
            ),
            Step(
                name="final-notice",
                days=14,
                anchor="previous",
                actions=(
                    EmailAction(template="acme_final"),
                    LateFeeAction(percent=Decimal(2), booking="invoice"),
                    CallTaskAction(note="Ask for a date"),
                    SuspendAction(tag="on-hold"),
                    CollectionsAction(submit=True),
                ),
            ),
        ),
    )
    high_risk = Policy(
        name="high-risk",
        segment=Segment(risk_levels=frozenset({"high"})),
        steps=(
            Step(name="upcoming", days=-3, actions=(EmailAction(template="reminder_upcoming"),)),
            Step(name="due", days=0, actions=(StatementAction(template="statement"),)),
            Step(name="chase", days=7, anchor="previous", actions=(CallTaskAction(),)),
            Step(name="escalate", days=30, actions=(CollectionsAction(),)),
        ),
    )
    assert dunning.policy == DunningPolicy(
        paused=False,
        policies=(standard, high_risk),
        window=SendWindow(start=time(8, 30), end=time(17), business_days_only=True, country="US", subdivision="NY"),
        pacing=Pacing(daily_cap=500, min_gap=timedelta(hours=48)),
        run_hour=7,
        reset_on_partial_payment=False,
        autopay_grace_days=2,
        promise_broken=(EmailAction(template="promise_broken"), SuspendAction()),
        plan_reminder_days=4,
        summary="weekly",
        suspension_webhook=WebhookTarget(url="https://psa.example.com/hooks/credit-hold", secret=SUSPEND_SECRET),
        collections=CollectionsSettings(
            eligible_after_days=45,
            agency_name="Northwind Recovery",
            webhook=WebhookTarget(url="https://agency.example/api/placements", secret=AGENCY_SECRET),
            email="intake@agency.example",
            upfront_percent=Decimal(1),
            success_percent=Decimal("22.5"),
        ),
        pdf_url="https://billing.example.com/invoices/{connection}/{invoice}.pdf",
    )
    assert dunning.mail == MailConfig(
        host="smtp.example.com",
        port=2525,
        security="starttls",
        username="billing@acme.example",
        password=Secret(SMTP_PASSWORD),
        sender="Acme Billing <billing@acme.example>",
        reply_to="ar@acme.example",
        unsubscribe_url="https://billing.acme.example/unsubscribe/{token}",
        unsubscribe_mailto="unsubscribe@acme.example",
        timeout_seconds=20,
    )
    assert dunning.branding == Branding(
        company_name="Acme Ltd",
        logo_url="https://acme.example/logo.png",
        accent_color="#336699",
        footer="Acme Ltd, 1 Main St",
        support_email="ar@acme.example",
        template_dir=str(tmp_path / "templates" / "acme"),
    )
    assert dunning.sms == SmsConfig(
        provider="twilio",
        account_sid=SID,
        auth_token=Secret(TWILIO_TOKEN),
        from_number="+15551234567",
        base_url="http://127.0.0.1:8099",
    )

    # the days of each step relative to the due date, with `previous` anchors resolved
    assert standard.offsets() == (1, 15)
    assert [policy.offsets() for policy in dunning.policy.policies] == [(1, 15), (-3, 0, 7, 30)]
    # Decimals exactly as written, never through a float
    fee = dunning.policy.policies[0].steps[0].actions[1]
    assert isinstance(fee, LateFeeAction)
    assert [str(v) for v in (fee.flat, fee.percent, fee.minimum, fee.maximum)] == ["25", "1.5", "10", "200"]
    assert str(dunning.policy.collections.success_percent) == "22.5"
    assert fee.amount(Decimal("1000.00"), Decimal(0)) == Decimal("40.00")
    # the first matching policy wins
    facts = CustomerFacts(tags=frozenset({"msp"}), currency="USD", balance=Decimal(10), risk="high", on_autopay=False)
    assert dunning.policy.policy_for(facts) == high_risk


def test_mail_settings_reveal_the_password_only_there(tmp_path: Path) -> None:
    mail = dunning_of(tmp_path).mail
    assert mail is not None
    settings = mail.settings()
    assert isinstance(settings, MailSettings)
    assert settings.password == SMTP_PASSWORD
    assert (settings.host, settings.port, settings.username) == ("smtp.example.com", 2525, "billing@acme.example")
    assert settings.sender_address == "billing@acme.example"
    assert SMTP_PASSWORD not in repr(settings)


def test_an_empty_section_takes_the_defaults(tmp_path: Path) -> None:
    dunning = dunning_of(tmp_path, "[tenants.acme.dunning]\n")
    assert dunning == DunningConfig(
        policy=DunningPolicy(), mail=None, branding=Branding(company_name="Acme Plumbing Ltd"), sms=None
    )
    policy = dunning.policy
    assert (policy.run_hour, policy.autopay_grace_days, policy.plan_reminder_days, policy.summary) == (8, 3, 3, "none")
    assert policy.window == SendWindow(start=time(9), end=time(17), business_days_only=True)
    assert policy.pacing == Pacing(daily_cap=None, min_gap=timedelta(hours=24))
    assert policy.collections == CollectionsSettings()


def test_a_tenant_without_dunning_has_none(tmp_path: Path) -> None:
    (tenant,) = load_config(write(tmp_path, BASE), environ=ENV).tenants
    assert tenant.dunning is None


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_the_smtp_port_defaults_by_security(tmp_path: Path, security: str, port: int) -> None:
    text = (
        f'[tenants.acme.dunning.mail]\nhost = "relay.internal"\nsecurity = "{security}"\nsender = "ar@acme.example"\n'
    )
    mail = dunning_of(tmp_path, text).mail
    assert mail is not None
    assert (mail.host, mail.port, mail.security, mail.sender) == ("relay.internal", port, security, "ar@acme.example")
    assert mail.username is None and mail.password is None and mail.settings().username is None


def test_times_may_be_toml_local_times(tmp_path: Path) -> None:
    text = "[tenants.acme.dunning.window]\nstart = 07:45:00\nend = 18:00:00\nbusiness_days_only = false\n"
    window = dunning_of(tmp_path, text).policy.window
    assert window == SendWindow(start=time(7, 45), end=time(18), business_days_only=False)
    text = '[tenants.acme.dunning.window]\nstart = "7:05"\nend = "19:30:15"\n'
    assert dunning_of(tmp_path, text).policy.window == SendWindow(start=time(7, 5), end=time(19, 30, 15))


def test_every_packaged_template_is_accepted(tmp_path: Path) -> None:
    actions = ", ".join(f'{{ kind = "email", template = "{name}" }}' for name in TEMPLATE_NAMES)
    text = (
        '[tenants.acme.dunning.mail]\nhost = "relay.internal"\nsender = "ar@acme.example"\n'
        f'[[tenants.acme.dunning.policies]]\nname = "all"\n'
        f'[[tenants.acme.dunning.policies.steps]]\nname = "s"\ndays = 1\nactions = [{actions}]\n'
    )
    (policy,) = dunning_of(tmp_path, text).policy.policies
    assert [a.template for a in policy.steps[0].actions if isinstance(a, EmailAction)] == list(TEMPLATE_NAMES)
    assert (packaged_templates() / "statement.html").is_file()


def test_a_tenant_template_overrides_or_adds_by_name(tmp_path: Path) -> None:
    # acme_final exists only in the tenant's folder; reminder_overdue in both (the tenant's wins when rendering)
    tenant_templates(tmp_path, "reminder_overdue")
    dunning = dunning_of(tmp_path)
    assert dunning.branding.template_dir == str(tmp_path / "templates" / "acme")
    # an incomplete tenant template (no .html, and not packaged) is not a template
    (tmp_path / "templates" / "acme" / "acme_final.html").unlink()
    key, message = problem_at_no_setup(tmp_path, FULL)
    assert key == f"{P0}.steps[1].actions[0].template"
    assert "no template named 'acme_final'" in message


def problem_at_no_setup(tmp_path: Path, text: str) -> tuple[str, str]:
    problem = only_problem(write(tmp_path, BASE + text), DENV)
    return problem.key, problem.message


# ----------------------------------------------------------------------------- problems

S0 = f"{P0}.steps[0]"
S1 = f"{P0}.steps[1]"
IN_S0 = "(policy 'standard', step 'first-overdue')"
IN_S1 = "(policy 'standard', step 'final-notice')"
IN_P0 = "(policy 'standard')"
FEE = '{ kind = "late_fee", flat = "25", percent = "1.5", minimum = "10", maximum = "200"'
MAIL = "[tenants.acme.dunning.mail]"


def _without_table(text: str, header: str) -> str:
    """``text`` without the table ``header`` and its keys (up to the next table)."""
    start = text.index(header)
    end = text.find("\n[", start + 1)
    return text[:start] + (text[end + 1 :] if end != -1 else "")


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        # names
        (
            'name = "high-risk"',
            'name = "standard"',
            f"{P1}.name",
            "policy name 'standard' is already used by policies[0]",
        ),
        ('name = "final-notice"', 'name = "first-overdue"', f"{S1}.name", "step name 'first-overdue' is already used"),
        ('name = "standard"\n', "", f"{P0}.name", "missing required key"),
        ('name = "final-notice"', 'name = ""', f"{S1}.name", "must not be empty"),
        # step order, relative to the due date
        ("days = 14\n", "days = -1\n", f"{S1}.days", "falls on day 0 (relative to the due date), before the previous"),
        (
            'days = 30\nactions = [{ kind = "collections" }]',
            'days = 6\nactions = [{ kind = "collections" }]',
            f"{P1}.steps[3].days",
            "falls on day +6 (relative to the due date), before the previous step 'chase' on day +7",
        ),
        ('days = 1\nanchor = "due"', 'days = 1\nanchor = "previous"', f"{S0}.anchor", "the first step has no previous"),
        (
            'anchor = "previous"\nactions = [\n',
            'anchor = "before"\nactions = [\n',
            f"{S1}.anchor",
            "must be 'due' or 'previous' (got 'before')",
        ),
        ("days = 14\n", "days = 1.5\n", f"{S1}.days", "must be an integer, not a float"),
        # actions
        (
            '{ kind = "call", note',
            '{ kind = "phone", note',
            f"{S1}.actions[2].kind",
            "unknown action kind 'phone'; known kinds: email, statement, sms, call, late_fee, suspend, collections",
        ),
        ('{ kind = "suspend", tag', '{ kind = "suspnd", tag', f"{S1}.actions[3].kind", "(did you mean 'suspend'?)"),
        ('{ kind = "call", note', "{ note", f"{S1}.actions[2].kind", "missing required key; known kinds: email,"),
        ('{ kind = "call", note = "Ask for a date" }', '"call"', f"{S1}.actions[2]", "must be a table such as"),
        ('{ kind = "call", note', '{ kind = "call", notes', f"{S1}.actions[2].notes", "did you mean 'note'"),
        ('{ kind = "suspend", tag = "on-hold" }', '{ kind = "suspend", tag = "" }', f"{S1}.actions[3].tag", "empty"),
        (
            '{ kind = "collections", submit = true }',
            '{ kind = "collections", submit = "yes" }',
            f"{S1}.actions[4].submit",
            "must be true or false",
        ),
        # late fees
        (
            '{ kind = "late_fee", percent = 2, booking = "invoice" }',
            '{ kind = "late_fee", booking = "invoice" }',
            f"{S1}.actions[1]",
            "charges nothing: set flat, percent or both",
        ),
        (
            '{ kind = "late_fee", percent = 2,',
            '{ kind = "late_fee", flat = "0", percent = 0,',
            f"{S1}.actions[1]",
            "charges nothing",
        ),
        (
            FEE,
            FEE.replace('minimum = "10"', 'minimum = "300"'),
            f"{S0}.actions[1].maximum",
            "must be at least minimum (300); got 200",
        ),
        (
            FEE,
            FEE.replace('flat = "25"', 'flat = "-25"'),
            f"{S0}.actions[1].flat",
            "greater than or equal to 0 (got '-25')",
        ),
        (
            FEE,
            FEE.replace('minimum = "10"', 'minimum = "-1"'),
            f"{S0}.actions[1].minimum",
            "greater than or equal to 0",
        ),
        (
            FEE,
            FEE.replace('percent = "1.5"', 'percent = "150"'),
            f"{S0}.actions[1].percent",
            "less than or equal to 100 (got '150')",
        ),
        (FEE, FEE.replace('percent = "1.5"', "percent = 1.5"), f"{S0}.actions[1].percent", 'write 1.5 as "1.5"'),
        (FEE, FEE.replace('flat = "25"', 'flat = "25 USD"'), f"{S0}.actions[1].flat", 'decimal number such as "12.50"'),
        ("grace_days = 5", "grace_days = -5", f"{S0}.actions[1].grace_days", "greater than or equal to 0"),
        ('booking = "line"', 'booking = "credit"', f"{S0}.actions[1].booking", "must be 'line' or 'invoice'"),
        # templates
        (
            'template = "reminder_overdue" },\n  { kind = "late_fee"',
            'template = "reminder_overdu" },\n  { kind = "late_fee"',
            f"{S0}.actions[0].template",
            "no template named 'reminder_overdu' in the packaged templates or",
        ),
        (
            '{ kind = "sms", template = "reminder_overdue" }',
            '{ kind = "sms", template = "text_me" }',
            f"{S0}.actions[3].template",
            "no template named 'text_me'",
        ),
        (
            '{ kind = "statement" }',
            '{ kind = "statement", template = "statment" }',
            f"{S0}.actions[2].template",
            "(did you mean 'statement'?)",
        ),
        (
            'template = "promise_broken"',
            'template = "promise_kept"',
            f"{DUN}.promise_broken[0].template",
            "no template named 'promise_kept'",
        ),
        (
            'template = "promise_broken"',
            'template = "../secrets"',
            f"{DUN}.promise_broken[0].template",
            "must be a template name",
        ),
        (
            'template_dir = "templates/acme"',
            'template_dir = "templates/acne"',
            f"{DUN}.branding.template_dir",
            "does not exist; relative paths start at this file's folder",
        ),
        # segment and conditions
        ('max_balance = "100000"', 'max_balance = "-1"', f"{P0}.segment.max_balance", "greater than or equal to 0"),
        ('min_balance = "0"', 'min_balance = "200000"', f"{P0}.segment.max_balance", "must be at least min_balance"),
        (
            'risk_levels = ["low", "medium"]',
            'risk_levels = ["low", "severe"]',
            f"{P0}.segment.risk_levels[1]",
            "must be 'low', 'medium' or 'high' (got 'severe')",
        ),
        ('currencies = ["USD"]', 'currencies = ["usd"]', f"{P0}.segment.currencies[0]", "did you mean 'USD'"),
        ('tags_none = ["vip"]', 'tags_none = ["vip", "msp"]', f"{P0}.segment.tags_none", "which tags_any requires"),
        ("autopay = false", 'autopay = "no"', f"{P0}.segment.autopay", "must be true or false"),
        (
            "min_unpaid_invoices = 2",
            "min_unpaid_invoices = 0",
            f"{S0}.conditions.min_unpaid_invoices",
            "greater than or equal to 1",
        ),
        (
            'decline_codes = ["insufficient_funds"]',
            'decline_codes = ["x", "x"]',
            f"{S0}.conditions.decline_codes",
            "lists x more than once",
        ),
        ('min_balance = "50"', "min_balance = 50.0", f"{S0}.conditions.min_balance", "not a float"),
        (
            "min_unpaid_invoices = 2",
            "min_unpaid_invoice = 2",
            f"{S0}.conditions.min_unpaid_invoice",
            "did you mean 'min_unpaid_invoices'",
        ),
        ('tags_any = ["msp"]', 'tag_any = ["msp"]', f"{P0}.segment.tag_any", "did you mean 'tags_any'"),
        # the section's own keys
        ("run_hour = 7", "run_hour = 24", f"{DUN}.run_hour", "less than or equal to 23"),
        ("autopay_grace_days = 2", "autopay_grace_days = -1", f"{DUN}.autopay_grace_days", "greater than or equal"),
        ("plan_reminder_days = 4", "plan_reminder_days = -1", f"{DUN}.plan_reminder_days", "greater than or equal"),
        ('summary = "weekly"', 'summary = "daily"', f"{DUN}.summary", "must be 'none', 'weekly' or 'monthly'"),
        ("paused = false", "pause = false", f"{DUN}.pause", "did you mean 'paused'"),
        (
            'pdf_url = "https://billing.example.com/invoices/{connection}/{invoice}.pdf"',
            'pdf_url = "https://billing.example.com/invoices/{tenant}/{invoice}.pdf"',
            f"{DUN}.pdf_url",
            "unknown placeholder {tenant}; the placeholders allowed are {connection}, {invoice}",
        ),
        (
            'pdf_url = "https://billing.example.com/invoices/{connection}/{invoice}.pdf"',
            'pdf_url = "https://billing.example.com/invoices/{invoce}.pdf"',
            f"{DUN}.pdf_url",
            "(did you mean 'invoice'?)",
        ),
        (
            'pdf_url = "https://billing.example.com/invoices/{connection}/{invoice}.pdf"',
            'pdf_url = "https://billing.example.com/invoices/{invoice.pdf"',
            f"{DUN}.pdf_url",
            "unmatched",
        ),
        (
            'pdf_url = "https://billing.example.com/invoices/{connection}/{invoice}.pdf"',
            'pdf_url = "https://billing.example.com/invoices/latest.pdf"',
            f"{DUN}.pdf_url",
            "must contain {invoice}",
        ),
        ('{ kind = "suspend" }]', '{ kind = "suspend", tag = 1 }]', f"{DUN}.promise_broken[1].tag", "must be a string"),
        # window and pacing
        ('end = "17:00"', 'end = "08:00"', f"{DUN}.window.end", "must be after start (08:30); got 08:00"),
        ('end = "17:00"', 'end = "08:30"', f"{DUN}.window.end", "must be after start"),
        ('start = "08:30"', 'start = "8.30am"', f"{DUN}.window.start", 'time of day such as "09:00"'),
        ('start = "08:30"', 'start = "25:00"', f"{DUN}.window.start", 'time of day such as "09:00"'),
        ('country = "US"', 'country = "XX"', f"{DUN}.window.country", "unknown country 'XX'"),
        ('country = "US"', 'country = "us"', f"{DUN}.window.country", "(did you mean 'US'?)"),
        ('subdivision = "NY"', 'subdivision = "QQ"', f"{DUN}.window.subdivision", "unknown subdivision 'QQ' of 'US'"),
        ('subdivision = "NY"', 'subdivision = "ny"', f"{DUN}.window.subdivision", "(did you mean 'NY'?)"),
        ('country = "US"\n', "", f"{DUN}.window.subdivision", "needs a country"),
        ("daily_cap = 500", "daily_cap = 0", f"{DUN}.pacing.daily_cap", "greater than or equal to 1"),
        ("min_gap_hours = 48", "min_gap_hours = -1", f"{DUN}.pacing.min_gap_hours", "greater than or equal to 0"),
        # collections, webhooks
        (
            'success_percent = "22.5"',
            'success_percent = "122.5"',
            f"{DUN}.collections.success_percent",
            "less than or equal to 100",
        ),
        ('upfront_percent = "1"', "upfront_percent = 1.0", f"{DUN}.collections.upfront_percent", "not a float"),
        ('email = "intake@agency.example"', 'email = "intake"', f"{DUN}.collections.email", "must be an email address"),
        (
            'url = "https://agency.example/api/placements"',
            'url = "agency.example"',
            f"{DUN}.collections.webhook.url",
            "http:// or https://",
        ),
        ("eligible_after_days = 45", "eligible_after_days = -1", f"{DUN}.collections.eligible_after_days", "greater"),
        # mail
        ('security = "starttls"', 'security = "tls"', f"{DUN}.mail.security", "must be 'starttls', 'ssl' or 'none'"),
        (
            'security = "starttls"',
            'security = "none"',
            f"{DUN}.mail.username",
            "the password would cross the network in clear",
        ),
        ("port = 2525", "port = 70000", f"{DUN}.mail.port", "less than or equal to 65535"),
        (
            'sender = "Acme Billing <billing@acme.example>"',
            'sender = "Acme Billing"',
            f"{DUN}.mail.sender",
            "must be an address such as",
        ),
        (
            'sender = "Acme Billing <billing@acme.example>"',
            'sender = "Acme <billing@acme.example> x"',
            f"{DUN}.mail.sender",
            "must be an address such as",
        ),
        ('reply_to = "ar@acme.example"', 'reply_to = "ar at acme"', f"{DUN}.mail.reply_to", "must be an email address"),
        (
            'unsubscribe_url = "https://billing.acme.example/unsubscribe/{token}"',
            'unsubscribe_url = "https://billing.acme.example/unsubscribe"',
            f"{DUN}.mail.unsubscribe_url",
            "must contain {token}",
        ),
        (
            'unsubscribe_url = "https://billing.acme.example/unsubscribe/{token}"',
            'unsubscribe_url = "http://billing.acme.example/unsubscribe/{token}"',
            f"{DUN}.mail.unsubscribe_url",
            "must be an https:// URL",
        ),
        (
            'unsubscribe_mailto = "unsubscribe@acme.example"',
            'unsubscribe_mailto = "unsubscribe"',
            f"{DUN}.mail.unsubscribe_mailto",
            "must be an email address",
        ),
        ('host = "smtp.example.com"\n', "", f"{DUN}.mail.host", "missing required key"),
        ("timeout_seconds = 20", "timeout_second = 20", f"{DUN}.mail.timeout_second", "did you mean 'timeout_seconds'"),
        # branding
        ('accent_color = "#336699"', 'accent_color = "blue"', f"{DUN}.branding.accent_color", "hex colour"),
        ('logo_url = "https://acme.example/logo.png"', 'logo_url = "logo.png"', f"{DUN}.branding.logo_url", "http"),
        ('support_email = "ar@acme.example"', 'support_email = "ar"', f"{DUN}.branding.support_email", "email address"),
        ('company_name = "Acme Ltd"', 'company = "Acme Ltd"', f"{DUN}.branding.company", "did you mean 'company_name'"),
        # sms
        (f'account_sid = "{SID}"', 'account_sid = "AC..."', f"{DUN}.sms.account_sid", "Twilio Account SID"),
        ('from_number = "+15551234567"', 'from_number = "555-1234"', f"{DUN}.sms.from_number", "E.164"),
        ('provider = "twilio"', 'provider = "vonage"', f"{DUN}.sms.provider", "must be 'twilio' (got 'vonage')"),
    ],
)
def test_each_problem_is_reported_once_at_its_key(tmp_path: Path, old: str, new: str, key: str, fragment: str) -> None:
    got_key, message = problem_at(tmp_path, edit(FULL, old, new))
    assert (got_key, fragment in message) == (key, True), message


@pytest.mark.parametrize(
    ("old", "new", "key", "suffix"),
    [
        (FEE, FEE.replace('percent = "1.5"', 'percent = "150"'), f"{S0}.actions[1].percent", IN_S0),
        ('{ kind = "call", note', '{ kind = "phone", note', f"{S1}.actions[2].kind", IN_S1),
        ("days = 14\n", "days = -1\n", f"{S1}.days", IN_S1),
        ('name = "final-notice"', 'name = "first-overdue"', f"{S1}.name", "(policy 'standard', step 'first-overdue')"),
        ('max_balance = "100000"', 'max_balance = "-1"', f"{P0}.segment.max_balance", IN_P0),
        ('name = "high-risk"', 'name = "standard"', f"{P1}.name", "(policy 'standard')"),
        ("run_hour = 7", "run_hour = 24", f"{DUN}.run_hour", "(got 24)"),
    ],
)
def test_problems_inside_a_policy_name_the_policy_and_the_step(
    tmp_path: Path, old: str, new: str, key: str, suffix: str
) -> None:
    got_key, message = problem_at(tmp_path, edit(FULL, old, new))
    assert got_key == key
    assert message.endswith(suffix)


def test_the_problem_form(tmp_path: Path) -> None:
    path = config_file(tmp_path, edit(FULL, FEE, FEE.replace('percent = "1.5"', 'percent = "150"')))
    problem = only_problem(path, DENV)
    assert str(problem) == (
        f"{path}: tenants.acme.dunning.policies[0].steps[0].actions[1].percent: must be less than or"
        " equal to 100 (got '150') (policy 'standard', step 'first-overdue')"
    )


def test_a_policy_needs_steps_and_a_step_needs_actions(tmp_path: Path) -> None:
    text = (
        FULL
        + '\n[[tenants.acme.dunning.policies]]\nname = "empty"\n'
        + '\n[[tenants.acme.dunning.policies]]\nname = "idle"\n'
        + '[[tenants.acme.dunning.policies.steps]]\nname = "nothing"\ndays = 1\nactions = []\n'
    )
    keys = by_key(problems_of(config_file(tmp_path, text), DENV))
    assert set(keys) == {f"{DUN}.policies[2].steps", f"{DUN}.policies[3].steps[0].actions"}
    assert keys[f"{DUN}.policies[2].steps"].startswith("a policy needs at least one step")
    assert keys[f"{DUN}.policies[2].steps"].endswith("(policy 'empty')")
    assert "a step needs at least one action; known kinds: email," in keys[f"{DUN}.policies[3].steps[0].actions"]
    assert keys[f"{DUN}.policies[3].steps[0].actions"].endswith("(policy 'idle', step 'nothing')")


def test_email_statement_and_summary_need_a_mail_section(tmp_path: Path) -> None:
    text = _without_table(FULL, MAIL)
    keys = by_key(problems_of(config_file(tmp_path, text), DENV))
    mail = "needs a [tenants.acme.dunning.mail] section"
    assert set(keys) == {
        f"{DUN}.promise_broken[0]",
        f"{S0}.actions[0]",
        f"{S0}.actions[2]",
        f"{S1}.actions[0]",
        f"{P1}.steps[0].actions[0]",
        f"{P1}.steps[1].actions[0]",
        f"{DUN}.summary",
        f"{DUN}.collections.email",
    }
    assert keys[f"{S0}.actions[0]"] == f"an email action {mail} (the SMTP server to send through) {IN_S0}"
    assert keys[f"{S0}.actions[2]"].startswith(f"a statement (an email) action {mail}")
    assert keys[f"{DUN}.summary"].startswith("a weekly summary is an email: add a [tenants.acme.dunning.mail] section")
    assert mail in keys[f"{DUN}.collections.email"]


def test_an_sms_action_needs_an_sms_section(tmp_path: Path) -> None:
    text = _without_table(FULL, "[tenants.acme.dunning.sms]")
    assert problem_at(tmp_path, text) == (
        f"{S0}.actions[3]",
        f"an sms action needs a [tenants.acme.dunning.sms] section (the SMS provider) {IN_S0}",
    )


def test_submitting_to_collections_needs_a_webhook_or_an_email(tmp_path: Path) -> None:
    text = _without_table(FULL, "[tenants.acme.dunning.collections.webhook]")
    assert load_config(config_file(tmp_path, text), environ=DENV).tenant("acme").dunning is not None  # email is enough
    text = edit(text, 'email = "intake@agency.example"\n', "")
    key, message = problem_at(tmp_path, text)
    assert key == f"{S1}.actions[4].submit"
    assert "has neither a webhook nor an email" in message and message.endswith(IN_S1)
    # a collections action without submit is a task for a person: no target needed
    assert (
        load_config(config_file(tmp_path, edit(text, "submit = true", "submit = false")), environ=DENV)
        .tenant("acme")
        .dunning
    )


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ("\n[tenants.acme.dunning]\n", "\n[tenants.acme.dunnig]\n", "tenants.acme.dunnig", "did you mean 'dunning'"),
        ("[tenants.acme.dunning.pacing]", "[tenants.acme.dunning.pacng]", f"{DUN}.pacng", "did you mean 'pacing'"),
        (
            "[tenants.acme.dunning.policies.segment]\ntags_any",
            "[tenants.acme.dunning.policies.segments]\ntags_any",
            f"{P0}.segments",
            "did you mean 'segment'",
        ),
        (
            '[[tenants.acme.dunning.policies.steps]]\nname = "upcoming"',
            '[[tenants.acme.dunning.policies.step]]\nname = "upcoming"',
            f"{P1}.step",
            "did you mean 'steps'",
        ),
        (
            "[tenants.acme.dunning.collections.webhook]",
            "[tenants.acme.dunning.collections.hook]",
            f"{DUN}.collections.hook",
            "did you mean 'webhook'",
        ),
    ],
)
def test_misspelt_tables(tmp_path: Path, old: str, new: str, key: str, fragment: str) -> None:
    keys = by_key(problems_of(config_file(tmp_path, edit(FULL, old, new)), DENV))
    assert fragment in keys[key]


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    text = edit(FULL, FEE, FEE.replace('percent = "1.5"', "percent = 1.5"))
    text = edit(text, '{ kind = "call", note', '{ kind = "phone", note')
    text = edit(text, 'end = "17:00"', 'end = "07:00"')
    text = edit(text, 'name = "high-risk"', 'name = "standard"')
    text = edit(text, 'password_env = "ARSYNC_ACME_SMTP_PASSWORD"', 'password_env = "ARSYNC_ACME_SMTP_PASSWORD_X"')
    text = edit(text, "days = 7\n", "days = -7\n")
    keys = by_key(problems_of(config_file(tmp_path, text), DENV))
    assert set(keys) == {
        f"{S0}.actions[1].percent",
        f"{S1}.actions[2].kind",
        f"{DUN}.window.end",
        f"{P1}.name",
        f"{DUN}.mail.password_env",
        f"{P1}.steps[2].days",
    }
    assert keys[f"{P1}.steps[2].days"].endswith("(policy 'standard', step 'chase')")


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[tenants.acme.dunning]\npolicies = 5\n", f"{DUN}.policies", "must be an array, not an integer"),
        ("[tenants.acme.dunning]\npolicies = [5]\n", P0, "must be a table, not an integer"),
        ('[tenants.acme.dunning]\npromise_broken = "suspend"\n', f"{DUN}.promise_broken", "must be an array"),
        ('[tenants.acme.dunning]\nwindow = "9-5"\n', f"{DUN}.window", "must be a table, not a string"),
        ("[[tenants.acme.dunning]]\npaused = true\n", DUN, "must be a table, not an array"),
    ],
)
def test_misshapen_sections(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    problem = only_problem(write(tmp_path, BASE + text), DENV)
    assert (problem.key, fragment in problem.message) == (key, True), problem


def test_dunning_that_is_not_a_table(tmp_path: Path) -> None:
    text = edit(BASE, 'home_currency = "USD"\n', 'home_currency = "USD"\ndunning = 5\n')
    problem = only_problem(write(tmp_path, text), DENV)
    assert (problem.key, problem.message) == (DUN, "must be a table, not an integer")


# ----------------------------------------------------------------------------- secrets


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, FULL), environ=DENV)
    dunning = config.tenant("acme").dunning
    assert dunning is not None
    texts = [repr(config), str(config), repr(dunning), str(dunning), repr(dunning.policy), f"{dunning}"]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    assert "password=********" in repr(dunning.mail) and "auth_token=********" in repr(dunning.sms)
    hook = dunning.policy.suspension_webhook
    assert hook is not None and hook.secret == SUSPEND_SECRET  # the planner signs with it


@pytest.mark.parametrize(
    ("table", "key", "credential"),
    [
        ("[tenants.acme.dunning.mail]", "password", "smtp_password"),
        ("[tenants.acme.dunning.sms]", "auth_token", "sms_auth_token"),
        ("[tenants.acme.dunning.suspension_webhook]", "secret", "suspension_secret"),
        ("[tenants.acme.dunning.collections.webhook]", "secret", "agency_secret"),
    ],
)
def test_inline_secrets_are_refused_without_echoing_them(tmp_path: Path, table: str, key: str, credential: str) -> None:
    value = "inline-secret-value-Zz9"
    text = re.sub(rf"(?m)^({re.escape(table)}\n(?:[^\[].*\n)*?){key}_env = .*$", rf'\1{key} = "{value}"', FULL)
    assert text != FULL
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(tmp_path, text), environ=DENV)
    (problem,) = caught.value.problems
    section = table.strip("[]")
    assert problem.key == f"{section}.{key}"
    assert "secrets may not be written in the config file" in problem.message
    assert f"{credential} under [dunning.acme]" in problem.message
    assert value not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("ARSYNC_ACME_SMTP_PASSWORD", f"{DUN}.mail.password_env"),
        ("ARSYNC_ACME_TWILIO_TOKEN", f"{DUN}.sms.auth_token_env"),
        ("ARSYNC_ACME_SUSPEND_SECRET", f"{DUN}.suspension_webhook.secret_env"),
        ("ARSYNC_ACME_AGENCY_SECRET", f"{DUN}.collections.webhook.secret_env"),
    ],
)
def test_a_secret_pasted_into_an_env_key_is_not_echoed(tmp_path: Path, variable: str, key: str) -> None:
    pasted = "pasted-Secret-value-Kk2"
    text = edit(FULL, f'"{variable}"', f'"{pasted}"')
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(tmp_path, text), environ=DENV)
    (problem,) = caught.value.problems
    assert problem.key == key
    assert "NAME of an environment variable" in problem.message
    assert pasted not in "".join(traceback.format_exception(caught.value))


def test_unset_and_empty_environment_variables(tmp_path: Path) -> None:
    environ = {k: v for k, v in DENV.items() if k != "ARSYNC_ACME_TWILIO_TOKEN"}
    assert problem_at(tmp_path, FULL, environ) == (
        f"{DUN}.sms.auth_token_env",
        "environment variable ARSYNC_ACME_TWILIO_TOKEN is not set",
    )
    assert problem_at(tmp_path, FULL, {**DENV, "ARSYNC_ACME_SUSPEND_SECRET": " "}) == (
        f"{DUN}.suspension_webhook.secret_env",
        "environment variable ARSYNC_ACME_SUSPEND_SECRET is empty",
    )


def test_without_env_or_credentials_file_each_secret_is_missing(tmp_path: Path) -> None:
    text = re.sub(r'(?m)^(password|auth_token|secret)_env = ".*"\n', "", FULL)
    keys = by_key(problems_of(config_file(tmp_path, text), DENV))
    assert set(keys) == {
        f"{DUN}.mail.password",
        f"{DUN}.sms.auth_token",
        f"{DUN}.suspension_webhook.secret",
        f"{DUN}.collections.webhook.secret",
    }
    assert keys[f"{DUN}.mail.password"].startswith("no password: set password_env to the name of an environment")
    assert "put it there as smtp_password under [dunning.acme]" in keys[f"{DUN}.mail.password"]


def test_a_password_needs_a_username(tmp_path: Path) -> None:
    text = edit(FULL, 'username = "billing@acme.example"\n', "")
    assert problem_at(tmp_path, text) == (f"{DUN}.mail.password_env", "a password needs a username: set username too")


# ----------------------------------------------------------------------------- credentials file


CREDENTIALS = f"""
[dunning.acme]
smtp_password = "{SMTP_PASSWORD}"
sms_auth_token = "{TWILIO_TOKEN}"
suspension_secret = "{SUSPEND_SECRET}"
agency_secret = "{AGENCY_SECRET}"
"""


def _with_credentials_file(tmp_path: Path, credentials: str, text: str | None = None) -> tuple[Path, Path]:
    creds = write(tmp_path, credentials, "credentials.toml")
    body = re.sub(r'(?m)^(password|auth_token|secret)_env = ".*"\n', "", FULL) if text is None else text
    base = edit(BASE, "[tenants.acme]", '[credentials]\nfile = "credentials.toml"\n\n[tenants.acme]')
    tenant_templates(tmp_path, "acme_final")
    return write(tmp_path, base + body), creds


def test_secrets_from_the_credentials_file(tmp_path: Path) -> None:
    path, _ = _with_credentials_file(tmp_path, CREDENTIALS)
    dunning = load_config(path, environ=ENV).tenant("acme").dunning
    assert dunning is not None and dunning.mail is not None and dunning.sms is not None
    assert dunning.mail.password == Secret(SMTP_PASSWORD)
    assert dunning.sms.auth_token.reveal() == TWILIO_TOKEN
    assert dunning.policy.suspension_webhook == WebhookTarget(
        url="https://psa.example.com/hooks/credit-hold", secret=SUSPEND_SECRET
    )
    assert dunning.policy.collections.webhook is not None
    assert dunning.policy.collections.webhook.secret == AGENCY_SECRET
    for secret in SECRETS:
        assert secret not in repr(dunning)


def test_the_environment_wins_over_the_credentials_file(tmp_path: Path) -> None:
    path, _ = _with_credentials_file(tmp_path, CREDENTIALS.replace(SMTP_PASSWORD, "from-the-file"), FULL)
    dunning = load_config(path, environ=DENV).tenant("acme").dunning
    assert dunning is not None and dunning.mail is not None
    assert dunning.mail.password == Secret(SMTP_PASSWORD)


def test_a_missing_credentials_entry_is_reported_in_that_file(tmp_path: Path) -> None:
    path, creds = _with_credentials_file(tmp_path, CREDENTIALS.replace(f'sms_auth_token = "{TWILIO_TOKEN}"\n', ""))
    problem = only_problem(path, ENV)
    assert (problem.file, problem.key) == (str(creds), "dunning.acme.sms_auth_token")
    assert problem.message == (
        f"missing: tenants.acme.dunning.sms has no auth_token_env in {path},"
        " so its auth_token must be given here as sms_auth_token under [dunning.acme]"
    )


def test_credentials_file_dunning_problems_name_that_file(tmp_path: Path) -> None:
    credentials = (
        CREDENTIALS.replace("smtp_password =", "smtp_pasword =")
        + f'[dunning.acne]\nsmtp_password = "{SMTP_PASSWORD}"\n'
        + f'[dunnng.acme]\nsmtp_password = "{SMTP_PASSWORD}"\n'
    )
    path, creds = _with_credentials_file(tmp_path, credentials)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENV)
    problems = caught.value.problems
    assert {p.file for p in problems} == {str(creds)}
    keys = by_key(problems)
    assert set(keys) == {"dunnng", "dunning.acme.smtp_pasword", "dunning.acne"}
    assert "did you mean 'dunning'" in keys["dunnng"]
    assert "did you mean 'smtp_password'" in keys["dunning.acme.smtp_pasword"]
    assert "no tenant named 'acne'" in keys["dunning.acne"] and "did you mean 'acme'" in keys["dunning.acne"]
    assert all(secret not in "".join(traceback.format_exception(caught.value)) for secret in SECRETS)


def test_unused_credentials_entries(tmp_path: Path) -> None:
    # a tenant without a dunning section
    path, creds = _with_credentials_file(tmp_path, CREDENTIALS, "")
    problem = only_problem(path, ENV)
    assert (problem.file, problem.key) == (str(creds), "dunning.acme")
    assert "tenant 'acme' has no dunning section ([tenants.acme.dunning])" in problem.message
    # keys for tables the section does not have, and a password for a relay without login
    text = _without_table(FULL, "[tenants.acme.dunning.sms]")
    text = _without_table(text, "[tenants.acme.dunning.suspension_webhook]")
    text = edit(text, 'username = "billing@acme.example"\npassword_env = "ARSYNC_ACME_SMTP_PASSWORD"\n', "")
    text = edit(text, '  { kind = "sms", template = "reminder_overdue" },\n', "")
    path, creds = _with_credentials_file(tmp_path, CREDENTIALS, text)
    keys = by_key(problems_of(path, DENV))
    assert set(keys) == {"dunning.acme.smtp_password", "dunning.acme.sms_auth_token", "dunning.acme.suspension_secret"}
    assert keys["dunning.acme.sms_auth_token"] == f"unused: there is no [tenants.acme.dunning.sms] section in {path}"
    assert "[tenants.acme.dunning.mail] has no username" in keys["dunning.acme.smtp_password"]


# ----------------------------------------------------------------------------- the example file


def test_the_example_dunning_section_loads(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    names = re.findall(r'^\s*client_(?:id|secret)_env\s*=\s*"([A-Z0-9_]+)"', text, re.M)
    environ = {name: f"dummy-{name.lower()}" for name in names}

    config = load_config(EXAMPLE, environ=environ)

    dunning = config.tenants[0].dunning
    assert dunning is not None
    policies = dunning.policy.policies
    assert [p.name for p in policies] == ["low-risk", "high-risk"]
    low, high = policies
    assert low.segment.risk_levels == frozenset({"low"})
    assert not any(isinstance(a, CallTaskAction | LateFeeAction) for s in low.steps for a in s.actions)
    assert any(isinstance(a, CallTaskAction) for s in high.steps for a in s.actions)
    fees = [a for s in high.steps for a in s.actions if isinstance(a, LateFeeAction)]
    assert fees and all(isinstance(fee.flat, Decimal) and isinstance(fee.percent, Decimal) for fee in fees)
    assert low.offsets()[0] < 0 < low.offsets()[-1]
    assert list(high.offsets()) == sorted(high.offsets())
    assert dunning.mail is not None
    assert dunning.branding.company_name == config.tenants[0].display_name


def _example_with_optional_dunning_tables() -> str:
    """config.example.toml with its commented-out dunning tables (webhooks, SMS) switched on."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    out: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("# [tenants.acme.dunning."):
            inside = True
        elif not line.startswith("# "):
            inside = False
        out.append(line[2:] if inside else line)
    return "".join(out)


def test_the_example_optional_dunning_tables_are_valid_once_uncommented(tmp_path: Path) -> None:
    text = _example_with_optional_dunning_tables()
    names = re.findall(r'^\s*(?:client_(?:id|secret)|secret|auth_token)_env\s*=\s*"([A-Z0-9_]+)"', text, re.M)
    environ = {name: f"dummy-{name.lower()}" for name in names}
    assert {"ARSYNC_ACME_SUSPEND_SECRET", "ARSYNC_ACME_AGENCY_SECRET", "ARSYNC_ACME_TWILIO_TOKEN"} <= set(environ)
    path = write(tmp_path, text.replace('url = "sqlite:///arsync.db"', f'url = "sqlite:///{tmp_path}/a.db"'))

    dunning = load_config(path, environ=environ).tenant("acme").dunning

    assert dunning is not None and dunning.sms is not None
    assert dunning.sms.auth_token.reveal() == "dummy-arsync_acme_twilio_token"
    hook, agency = dunning.policy.suspension_webhook, dunning.policy.collections.webhook
    assert hook is not None and hook.secret == "dummy-arsync_acme_suspend_secret"
    assert agency is not None and agency.secret == "dummy-arsync_acme_agency_secret"
    # as shipped, those tables are commented out
    shipped = load_config(EXAMPLE, environ=environ).tenant("acme").dunning
    assert shipped is not None and shipped.sms is None and shipped.policy.suspension_webhook is None


def test_the_action_kinds_are_the_policy_types() -> None:
    actions = (
        EmailAction(template="x"),
        StatementAction(),
        SmsAction(template="x"),
        CallTaskAction(),
        LateFeeAction(flat=Decimal(1)),
        SuspendAction(),
        CollectionsAction(),
    )
    assert tuple(action.kind for action in actions) == ACTION_KINDS
