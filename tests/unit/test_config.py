"""Tests for arsync.config: loading, validation problems, secrets."""

from __future__ import annotations

import pickle
import re
import traceback
from pathlib import Path

import pytest

from arsync.config import (
    ENTITIES,
    KNOWN_KINDS,
    Config,
    ConfigError,
    ConfigProblem,
    QuickBooksConnectionConfig,
    Secret,
    UnknownConnectionError,
    XeroConnectionConfig,
    XeroRateLimitConfig,
    default_config,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config.example.toml"

SECRET = "Zq8-very-secret-client-secret-9xK"
CLIENT_ID = "ABclientid0123"
XERO_SECRET = "xS3_-another-very-secret-xero-secret-Q7"
XERO_CLIENT_ID = "0A1B2C3D4E5F60718293A4B5C6D7E8F9"
XERO_TENANT_ID = "70784a63-d24b-46a9-a4db-0e70a274b056"
ENV = {
    "ACME_QBO_ID": CLIENT_ID,
    "ACME_QBO_SECRET": SECRET,
    "ACME_XERO_ID": XERO_CLIENT_ID,
    "ACME_XERO_SECRET": XERO_SECRET,
}

CONN = "tenants.acme.connections.acme-qbo"
XCONN = "tenants.acme.connections.acme-xero"

BASE = """\
[database]
url = "sqlite:///arsync.db"

[daemon]
log_format = "text"
shutdown_grace_seconds = 10

[tenants.acme]
display_name = "Acme Plumbing Ltd"
timezone = "America/Chicago"
home_currency = "USD"

[tenants.acme.connections.acme-qbo]
kind = "quickbooks"
realm_id = "9341453050000000"
environment = "production"
client_id_env = "ACME_QBO_ID"
client_secret_env = "ACME_QBO_SECRET"
redirect_uri = "https://example.com/arsync/callback"
sync_interval_minutes = 15
"""


XERO = """\
[database]
url = "sqlite:///arsync.db"

[tenants.acme]
display_name = "Acme Plumbing Ltd"
timezone = "Europe/London"
home_currency = "GBP"

[tenants.acme.connections.acme-xero]
kind = "xero"
xero_tenant_id = "70784a63-d24b-46a9-a4db-0e70a274b056"
client_id_env = "ACME_XERO_ID"
client_secret_env = "ACME_XERO_SECRET"
redirect_uri = "https://example.com/arsync/callback"
sync_interval_minutes = 15
"""


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"test bug: {old!r} not in the config text"
    return text.replace(old, new, 1)


def write(folder: Path, text: str, name: str = "arsync.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENV if environ is None else environ)
    return caught.value.problems


def only_problem(path: Path, environ: dict[str, str] | None = None) -> ConfigProblem:
    problems = problems_of(path, environ)
    assert len(problems) == 1, problems
    return problems[0]


def by_key(problems: list[ConfigProblem]) -> dict[str, str]:
    return {p.key: p.message for p in problems}


def qbo(config: Config, name: str = "acme-qbo") -> QuickBooksConnectionConfig:
    conn = config.connection(name)
    assert isinstance(conn, QuickBooksConnectionConfig)
    return conn


def xero(config: Config, name: str = "acme-xero") -> XeroConnectionConfig:
    conn = config.connection(name)
    assert isinstance(conn, XeroConnectionConfig)
    return conn


# ----------------------------------------------------------------------------- happy paths


def test_example_config_loads_with_the_env_vars_it_names() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    names = re.findall(r'^\s*client_(?:id|secret)_env\s*=\s*"([A-Z0-9_]+)"', text, re.M)
    assert len(names) >= 6
    environ = {name: f"dummy-{name.lower()}" for name in names}

    config = load_config(EXAMPLE, environ=environ)

    assert config.path == EXAMPLE
    assert len(config.tenants) == 2
    assert config.database.url == f"sqlite:///{REPO_ROOT / 'arsync.db'}"
    conns = config.connections()
    assert len(conns) == 3
    assert [c.kind for c in conns] == ["quickbooks", "quickbooks", "xero"]
    first = conns[0]
    assert first.tenant == config.tenants[0].name
    assert first.client_secret.reveal() == environ[names[1]]
    assert first.client_id.reveal() == environ[names[0]]
    assert first.api_base == "https://quickbooks.api.intuit.com/v3"
    xero = conns[2]
    assert isinstance(xero, XeroConnectionConfig)
    assert xero.tenant == config.tenants[1].name
    assert xero.client_id.reveal() == environ[names[4]]
    assert xero.client_secret.reveal() == environ[names[5]]
    assert xero.api_base == "https://api.xero.com/api.xro/2.0"
    assert "offline_access" in xero.scopes


def test_minimal_config_values_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), environ=ENV)

    assert config.daemon.log_format == "text"
    assert config.daemon.shutdown_grace_seconds == 10
    (tenant,) = config.tenants
    assert (tenant.name, tenant.display_name, tenant.home_currency) == (
        "acme",
        "Acme Plumbing Ltd",
        "USD",
    )
    assert tenant.tzinfo.key == "America/Chicago"
    conn = qbo(config)
    assert conn.tenant == "acme"
    assert conn.realm_id == "9341453050000000"
    assert conn.client_id.reveal() == CLIENT_ID
    assert conn.client_secret.reveal() == SECRET
    assert conn.entities == ENTITIES
    assert conn.overlap_seconds == 300
    assert conn.delete_guard_ratio == 0.5
    assert conn.minor_version == 75
    assert conn.timeout_seconds == 60
    assert (conn.rate_limit.per_second, conn.rate_limit.per_minute) == (10, 500)
    assert conn.rate_limit.concurrent == 10
    assert conn.api_base == "https://quickbooks.api.intuit.com/v3"
    assert conn.discovery == "production"
    assert conn.token_endpoint.startswith("https://oauth.platform.intuit.com/")


def test_sandbox_defaults_and_overrides(tmp_path: Path) -> None:
    text = edit(BASE, 'environment = "production"', 'environment = "sandbox"')
    conn = qbo(load_config(write(tmp_path / "a", text), environ=ENV))
    assert conn.api_base == "https://sandbox-quickbooks.api.intuit.com/v3"
    assert conn.discovery == "sandbox"

    text += (
        'base_url = "http://127.0.0.1:8081/v3/"\n'
        'token_url = "http://127.0.0.1:8081/oauth2/v1/tokens/bearer"\n'
        'discovery_url = "http://127.0.0.1:8081/.well-known/openid_sandbox_configuration"\n'
        'entities = ["invoice", "customer"]\n'
        "[tenants.acme.connections.acme-qbo.rate_limit]\nper_second = 2\n"
    )
    conn = qbo(load_config(write(tmp_path / "b", text), environ=ENV))
    assert conn.api_base == "http://127.0.0.1:8081/v3"
    assert conn.discovery == "http://127.0.0.1:8081/.well-known/openid_sandbox_configuration"
    assert conn.token_endpoint == "http://127.0.0.1:8081/oauth2/v1/tokens/bearer"
    assert conn.entities == ("invoice", "customer")
    assert conn.rate_limit.per_second == 2
    assert conn.rate_limit.per_minute == 500


def test_empty_tenants_is_a_database_only_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[tenants]\n"), environ={})
    assert config.tenants == ()
    assert config.connections() == ()
    assert config.database.url == f"sqlite:///{tmp_path / 'arsync.db'}"
    with pytest.raises(KeyError, match="none is configured"):
        config.connection("acme-qbo")


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), environ=ENV)
    with pytest.raises(AttributeError):
        config.tenants = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.connection("acme-qbo").sync_interval_minutes = 1  # type: ignore[misc]


def test_unknown_connection_lists_known_names(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), environ=ENV)
    with pytest.raises(UnknownConnectionError) as caught:
        config.connection("acme-qb")
    assert isinstance(caught.value, KeyError)
    assert "did you mean 'acme-qbo'" in str(caught.value)
    assert "known connections: acme-qbo" in str(caught.value)


# ----------------------------------------------------------------------------- database


def test_relative_sqlite_path_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "arsync"
    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url = "sqlite:///data/ledger.db"')
    path = write(folder, text)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/arsync/arsync.toml"), environ=ENV)
    assert config.database.url == f"sqlite:///{folder / 'data' / 'ledger.db'}"
    assert config.path == path


def test_absolute_sqlite_and_memory_urls_are_kept(tmp_path: Path) -> None:
    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url = "sqlite:////var/lib/arsync/a.db"')
    assert load_config(write(tmp_path / "a", text), environ=ENV).database.url == ("sqlite:////var/lib/arsync/a.db")
    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url = "sqlite://"')
    assert load_config(write(tmp_path / "b", text), environ=ENV).database.url == "sqlite://"


def test_missing_database_section_defaults_to_sqlite_beside_the_config(tmp_path: Path) -> None:
    text = edit(BASE, '[database]\nurl = "sqlite:///arsync.db"\n', "")
    config = load_config(write(tmp_path, text), environ=ENV)
    assert config.database.url == f"sqlite:///{tmp_path / 'arsync.db'}"


def test_postgresql_urls_are_accepted(tmp_path: Path) -> None:
    url = "postgresql+psycopg://arsync@db.internal:5432/arsync"
    text = edit(BASE, 'url = "sqlite:///arsync.db"', f'url = "{url}"')
    assert load_config(write(tmp_path / "a", text), environ=ENV).database.url == url

    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url = "postgresql://arsync@db/arsync"')
    config = load_config(write(tmp_path / "b", text), environ=ENV)
    assert config.database.url == "postgresql+psycopg://arsync@db/arsync"


def test_url_env_wins_when_set(tmp_path: Path) -> None:
    text = edit(BASE, 'url = "sqlite:///arsync.db"\n', 'url = "sqlite:///arsync.db"\nurl_env = "DB_URL"\n')
    path = write(tmp_path, text)
    pg = "postgresql+psycopg://arsync:pw@127.0.0.1:5432/test"
    assert load_config(path, environ={**ENV, "DB_URL": pg}).database.url == pg
    # unset: the inline url is used
    assert load_config(path, environ=ENV).database.url == f"sqlite:///{tmp_path / 'arsync.db'}"


def test_url_env_unset_without_url_is_a_problem(tmp_path: Path) -> None:
    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url_env = "DB_URL"')
    problem = only_problem(write(tmp_path, text))
    assert problem.key == "database.url_env"
    assert "DB_URL is not set" in problem.message


def test_bad_database_url_never_shows_the_password(tmp_path: Path) -> None:
    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url = "mysql://arsync:hunter2pw@db/arsync"')
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == "database.url"
    assert "unsupported database 'mysql'" in problem.message
    assert "hunter2pw" not in problem.message

    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url_env = "DB_URL"')
    problem = only_problem(write(tmp_path / "b", text), {**ENV, "DB_URL": "oracle://u:hunter2pw@h/d"})
    assert problem.key == "database.url_env"
    assert "hunter2pw" not in problem.message


def test_database_repr_hides_password(tmp_path: Path) -> None:
    text = edit(BASE, 'url = "sqlite:///arsync.db"', 'url_env = "DB_URL"')
    config = load_config(write(tmp_path, text), environ={**ENV, "DB_URL": "postgresql+psycopg://u:hunter2pw@h/d"})
    assert config.database.url.endswith("u:hunter2pw@h/d")
    assert "hunter2pw" not in repr(config)
    assert "hunter2pw" not in config.database.redacted_url


def test_default_config() -> None:
    config = default_config("postgresql+psycopg://arsync@db.internal:5432/arsync")
    assert isinstance(config, Config)
    assert config.path is None
    assert config.tenants == ()
    assert config.database.url == "postgresql+psycopg://arsync@db.internal:5432/arsync"
    assert config.daemon.log_format == "json"
    with pytest.raises(ConfigError) as caught:
        default_config("ftp://nowhere")
    assert caught.value.problems[0].key == "database.url"


# ----------------------------------------------------------------------------- file problems


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    problem = only_problem(path)
    assert problem.file == str(path)
    assert "not found" in problem.message
    assert str(ConfigError([problem])) == f"{path}: file not found: {path}"


def test_toml_syntax_error_reports_line_column_and_key(tmp_path: Path) -> None:
    text = edit(BASE, 'timezone = "America/Chicago"', "timezone = America/Chicago")
    path = write(tmp_path, text)
    line = text.splitlines().index("timezone = America/Chicago") + 1
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == "tenants.acme.timezone"
    assert f"line {line}, column 12" in problem.message
    assert "double quotes" in problem.message


def test_toml_syntax_error_in_a_quoted_table_header(tmp_path: Path) -> None:
    text = edit(BASE, "[tenants.acme.connections.acme-qbo]", '[tenants.acme.connections."acme-qbo"]')
    text = edit(text, "sync_interval_minutes = 15", "sync_interval_minutes = = 15")
    line = text.splitlines().index("sync_interval_minutes = = 15") + 1
    problem = only_problem(write(tmp_path, text))
    assert problem.key == f"{CONN}.sync_interval_minutes"
    assert f"line {line}, column 25" in problem.message
    assert "double quotes" not in problem.message


# ----------------------------------------------------------------------------- key problems


def test_unknown_key_suggests_the_closest_known_key(tmp_path: Path) -> None:
    text = edit(BASE, "sync_interval_minutes = 15", "sync_intervall_minutes = 15")
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == f"{CONN}.sync_intervall_minutes"
    assert "did you mean 'sync_interval_minutes'" in problem.message


@pytest.mark.parametrize(
    ("old", "new", "key", "suggestion"),
    [
        ("[daemon]", "[deamon]", "deamon", "daemon"),
        ('log_format = "text"', 'logformat = "text"', "daemon.logformat", "log_format"),
        ('home_currency = "USD"', 'home_curency = "USD"', "tenants.acme.home_curency", "home_currency"),
        (
            "sync_interval_minutes = 15",
            "sync_interval_minutes = 15\n[tenants.acme.connections.acme-qbo.rate_limit]\nper_sec = 3",
            f"{CONN}.rate_limit.per_sec",
            "per_second",
        ),
    ],
)
def test_unknown_keys_in_every_section(tmp_path: Path, old: str, new: str, key: str, suggestion: str) -> None:
    problems = by_key(problems_of(write(tmp_path, edit(BASE, old, new))))
    assert f"did you mean {suggestion!r}" in problems[key]


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, BASE + "zzz = 1\n"))
    assert problem.key == f"{CONN}.zzz"
    assert "known keys:" in problem.message
    assert "sync_interval_minutes" in problem.message


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        (
            "sync_interval_minutes = 15",
            'sync_interval_minutes = "15"',
            "sync_interval_minutes",
            "must be an integer, not a string",
        ),
        ('realm_id = "9341453050000000"', "realm_id = 9341453050000000", "realm_id", "put the value in double quotes"),
        ('realm_id = "9341453050000000"', 'realm_id = "acme"', "realm_id", "digits only"),
        (
            "sync_interval_minutes = 15",
            "sync_interval_minutes = -5",
            "sync_interval_minutes",
            "greater than or equal to 1",
        ),
        (
            "sync_interval_minutes = 15",
            "sync_interval_minutes = 0",
            "sync_interval_minutes",
            "greater than or equal to 1",
        ),
        ("sync_interval_minutes = 15", "overlap_seconds = -1", "overlap_seconds", "greater than or equal to 0"),
        ("sync_interval_minutes = 15", "delete_guard_ratio = 1.5", "delete_guard_ratio", "less than or equal to 1"),
        ("sync_interval_minutes = 15", "timeout_seconds = 0", "timeout_seconds", "greater than 0"),
        ('environment = "production"', 'environment = "prod"', "environment", "must be 'production' or 'sandbox'"),
        (
            "sync_interval_minutes = 15",
            'entities = ["invoice", "invoices"]',
            "entities[1]",
            "'customer', 'invoice', 'payment' or 'credit_note'",
        ),
        ("sync_interval_minutes = 15", 'entities = ["invoice", "invoice"]', "entities", "invoice more than once"),
        ("sync_interval_minutes = 15", "entities = []", "entities", "must not be empty"),
        ("sync_interval_minutes = 15", "rate_limit = 5", "rate_limit", "must be a table"),
        (
            "sync_interval_minutes = 15",
            "rate_limit = { per_second = 20, per_minute = 5 }",
            "rate_limit",
            "per_minute (5) must be at least per_second (20)",
        ),
        (
            "sync_interval_minutes = 15",
            "rate_limit = { concurrent = 0 }",
            "rate_limit.concurrent",
            "greater than or equal to 1",
        ),
        (
            'redirect_uri = "https://example.com/arsync/callback"',
            'redirect_uri = "ftp://example.com/cb"',
            "redirect_uri",
            "http:// or https://",
        ),
        (
            'redirect_uri = "https://example.com/arsync/callback"',
            'redirect_uri = "example.com/cb"',
            "redirect_uri",
            "http:// or https://",
        ),
        ("sync_interval_minutes = 15", 'base_url = "quickbooks.api.intuit.com"', "base_url", "http:// or https://"),
        ("sync_interval_minutes = 15", 'token_url = "file:///etc/passwd"', "token_url", "http:// or https://"),
        ('redirect_uri = "https://example.com/arsync/callback"\n', "", "redirect_uri", "missing required key"),
        (
            'client_secret_env = "ACME_QBO_SECRET"',
            'client_secret_env = "acme-secret"',
            "client_secret_env",
            "NAME of an environment variable",
        ),
    ],
)
def test_connection_value_problems_name_the_dotted_key(
    tmp_path: Path, old: str, new: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, edit(BASE, old, new))
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == f"{CONN}.{key}"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        (
            'timezone = "America/Chicago"',
            'timezone = "America/Chicgo"',
            "tenants.acme.timezone",
            "did you mean 'America/Chicago'",
        ),
        ('timezone = "America/Chicago"', 'timezone = "/etc/localtime"', "tenants.acme.timezone", "unknown time zone"),
        ('home_currency = "USD"', 'home_currency = "usd"', "tenants.acme.home_currency", "did you mean 'USD'"),
        ('home_currency = "USD"', 'home_currency = "US Dollar"', "tenants.acme.home_currency", "3-letter"),
        ('home_currency = "USD"\n', "", "tenants.acme.home_currency", "missing required key"),
        ('log_format = "text"', 'log_format = "xml"', "daemon.log_format", "'json' or 'text'"),
        (
            "shutdown_grace_seconds = 10",
            "shutdown_grace_seconds = -1",
            "daemon.shutdown_grace_seconds",
            "greater than or equal to 0",
        ),
        (
            "shutdown_grace_seconds = 10",
            "shutdown_grace_seconds = true",
            "daemon.shutdown_grace_seconds",
            "not a boolean",
        ),
        (
            "[tenants.acme.connections.acme-qbo]",
            "[tenants.acme.connections.Acme_QBO]",
            "tenants.acme.connections.Acme_QBO",
            "lower-case",
        ),
    ],
)
def test_tenant_and_daemon_problems(tmp_path: Path, old: str, new: str, key: str, fragment: str) -> None:
    text = edit(BASE, old, new)
    problem = only_problem(write(tmp_path, text))
    assert problem.key == key
    assert fragment in problem.message


def test_tenant_name_must_be_lower_case(tmp_path: Path) -> None:
    text = BASE.replace("[tenants.acme", "[tenants.Acme")
    problem = only_problem(write(tmp_path, text))
    assert problem.key == "tenants.Acme"
    assert "lower-case" in problem.message


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    assert KNOWN_KINDS == ("quickbooks", "xero")
    path = write(tmp_path, edit(BASE, 'kind = "quickbooks"', 'kind = "sage"'))
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == f"{CONN}.kind"
    assert "unknown connection kind 'sage'" in problem.message
    assert "known kinds: quickbooks, xero" in problem.message

    problem = only_problem(write(tmp_path / "b", edit(BASE, 'kind = "quickbooks"\n', "")))
    assert problem.key == f"{CONN}.kind"
    assert "missing" in problem.message
    assert "known kinds: quickbooks, xero" in problem.message

    problem = only_problem(write(tmp_path / "c", edit(XERO, 'kind = "xero"', 'kind = "Xero"')))
    assert problem.key == f"{XCONN}.kind"
    assert "did you mean 'xero'" in problem.message
    assert "known kinds: quickbooks, xero" in problem.message

    problem = only_problem(write(tmp_path / "d", edit(XERO, 'kind = "xero"', "kind = 1")))
    assert problem.key == f"{XCONN}.kind"
    assert "unknown connection kind an integer" in problem.message


def test_duplicate_connection_names_across_tenants(tmp_path: Path) -> None:
    text = BASE + (
        '[tenants.other]\ntimezone = "UTC"\nhome_currency = "EUR"\n'
        "[tenants.other.connections.acme-qbo]\n"
        'kind = "quickbooks"\nclient_id_env = "ACME_QBO_ID"\nclient_secret_env = "ACME_QBO_SECRET"\n'
        'redirect_uri = "https://example.com/cb"\n'
    )
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.key == "tenants.other.connections.acme-qbo"
    assert "already used by tenant 'acme'" in problem.message
    assert "unique across all tenants" in problem.message


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = edit(BASE, 'log_format = "text"', 'log_format = "xml"')
    text = edit(text, 'timezone = "America/Chicago"', 'timezone = "Mars/Olympus"')
    text = edit(text, "sync_interval_minutes = 15", "sync_interval_minutes = -1\nsurprise = 1")
    text += (
        '[tenants.beta]\ntimezone = "UTC"\nhome_currency = "eur"\n'
        "[tenants.beta.connections.beta-qbo]\n"
        'kind = "quickbooks"\nclient_id_env = "BETA_ID"\nclient_secret_env = "BETA_SECRET"\n'
        'redirect_uri = "mailto:x"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENV)
    problems = caught.value.problems
    assert {p.file for p in problems} == {str(path)}
    keys = by_key(problems)
    assert set(keys) == {
        "daemon.log_format",
        "tenants.acme.timezone",
        f"{CONN}.sync_interval_minutes",
        f"{CONN}.surprise",
        "tenants.beta.home_currency",
        "tenants.beta.connections.beta-qbo.redirect_uri",
        "tenants.beta.connections.beta-qbo.client_id_env",
        "tenants.beta.connections.beta-qbo.client_secret_env",
    }
    lines = str(caught.value).splitlines()
    assert len(lines) == len(problems)
    assert any(line.startswith(f"{path}: tenants.acme.timezone: unknown time zone 'Mars/Olympus'") for line in lines)
    for problem in problems:
        assert f"{problem.file}: {problem.key}: {problem.message}" in lines
    assert pickle.loads(pickle.dumps(caught.value)).problems == problems


# ----------------------------------------------------------------------------- secrets


def test_secret_resolved_from_environment(tmp_path: Path) -> None:
    conn = load_config(write(tmp_path, BASE), environ=ENV).connection("acme-qbo")
    assert conn.client_secret.reveal() == SECRET
    assert isinstance(conn.client_secret, Secret)


def test_unset_environment_variable_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    problem = only_problem(path, {"ACME_QBO_ID": CLIENT_ID})
    assert problem.file == str(path)
    assert problem.key == f"{CONN}.client_secret_env"
    assert "ACME_QBO_SECRET is not set" in problem.message


def test_empty_environment_variable_is_a_problem(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, BASE), {**ENV, "ACME_QBO_ID": "  "})
    assert problem.key == f"{CONN}.client_id_env"
    assert "is empty" in problem.message


def test_inline_client_id_is_allowed(tmp_path: Path) -> None:
    text = edit(BASE, 'client_id_env = "ACME_QBO_ID"', 'client_id = "ABinline"')
    conn = load_config(write(tmp_path, text), environ=ENV).connection("acme-qbo")
    assert conn.client_id.reveal() == "ABinline"


def test_inline_client_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    text = edit(BASE, 'client_secret_env = "ACME_QBO_SECRET"', f'client_secret = "{SECRET}"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENV)
    problem = caught.value.problems[0]
    assert len(caught.value.problems) == 1
    assert problem.key == f"{CONN}.client_secret"
    assert "environment variable or the credentials file" in problem.message
    rendered = "".join(traceback.format_exception(caught.value))
    assert SECRET not in rendered
    assert SECRET not in repr(caught.value)


def test_secret_pasted_into_an_env_key_is_not_echoed(tmp_path: Path) -> None:
    text = edit(BASE, 'client_secret_env = "ACME_QBO_SECRET"', f'client_secret_env = "{SECRET}"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=ENV)
    assert caught.value.problems[0].key == f"{CONN}.client_secret_env"
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_secret_is_never_printed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), environ=ENV)
    conn = config.connection("acme-qbo")
    for text in (repr(config), str(config), repr(conn), f"{conn.client_secret}", str(conn)):
        assert SECRET not in text
        assert CLIENT_ID not in text
    assert repr(conn.client_secret) == "********"
    assert str(conn.client_secret) == "********"


def test_secret_value_semantics() -> None:
    a, b = Secret("x1"), Secret("x1")
    assert a == b
    assert a != Secret("x2")
    assert hash(a) == hash(b)
    assert pickle.loads(pickle.dumps(a)).reveal() == "x1"
    with pytest.raises(AttributeError):
        a._value = "y"


def _with_credentials_file(text: str, file_line: str) -> str:
    text = edit(text, 'client_id_env = "ACME_QBO_ID"\n', "")
    text = edit(text, 'client_secret_env = "ACME_QBO_SECRET"\n', "")
    return edit(text, "[tenants.acme]", f"[credentials]\n{file_line}\n\n[tenants.acme]")


def test_secrets_from_the_credentials_file(tmp_path: Path) -> None:
    write(
        tmp_path / "secrets",
        f'[connections.acme-qbo]\nclient_id = "{CLIENT_ID}"\nclient_secret = "{SECRET}"\n',
        "credentials.toml",
    )
    text = _with_credentials_file(BASE, 'file = "secrets/credentials.toml"')
    config = load_config(write(tmp_path, text), environ={})
    conn = config.connection("acme-qbo")
    assert conn.client_id.reveal() == CLIENT_ID
    assert conn.client_secret.reveal() == SECRET


def test_environment_wins_over_the_credentials_file(tmp_path: Path) -> None:
    creds = write(
        tmp_path,
        '[connections.acme-qbo]\nclient_id = "from-file"\nclient_secret = "file-secret"\n',
        "credentials.toml",
    )
    text = edit(BASE, "[tenants.acme]", f'[credentials]\nfile = "{creds}"\n\n[tenants.acme]')
    conn = load_config(write(tmp_path, text), environ=ENV).connection("acme-qbo")
    assert conn.client_secret.reveal() == SECRET


def test_missing_credentials_file_is_a_problem(tmp_path: Path) -> None:
    text = _with_credentials_file(BASE, 'file = "credentials.toml"')
    path = write(tmp_path, text)
    problem = only_problem(path, {})
    assert problem.file == str(path)
    assert problem.key == "credentials.file"
    assert str(tmp_path / "credentials.toml") in problem.message


def test_unreadable_credentials_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "credentials.toml").mkdir()
    text = _with_credentials_file(BASE, 'file = "credentials.toml"')
    problem = only_problem(write(tmp_path, text), {})
    assert problem.key == "credentials.file"
    assert "directory" in problem.message


def test_invalid_credentials_toml_is_a_problem_without_the_secret(tmp_path: Path) -> None:
    creds = write(tmp_path, f"[connections.acme-qbo]\nclient_secret = {SECRET}\n", "credentials.toml")
    text = _with_credentials_file(BASE, 'file = "credentials.toml"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    (problem,) = caught.value.problems
    assert problem.file == str(creds)
    assert problem.key == "connections.acme-qbo.client_secret"
    assert "TOML syntax error at line 2" in problem.message
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_credentials_file_problems_name_that_file(tmp_path: Path) -> None:
    creds = write(
        tmp_path,
        f'[connections.acme-qbo]\nclient_id = "{CLIENT_ID}"\nclient_secrett = "{SECRET}"\n'
        f'[connections.acme-qb]\nclient_secret = "{SECRET}"\n',
        "credentials.toml",
    )
    text = _with_credentials_file(BASE, 'file = "credentials.toml"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    problems = caught.value.problems
    assert {p.file for p in problems} == {str(creds)}
    keys = by_key(problems)
    assert "did you mean 'client_secret'" in keys["connections.acme-qbo.client_secrett"]
    assert "did you mean 'acme-qbo'" in keys["connections.acme-qb"]
    assert SECRET not in str(caught.value)
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_credentials_file_without_the_connection(tmp_path: Path) -> None:
    creds = write(tmp_path, "", "credentials.toml")
    text = _with_credentials_file(BASE, 'file = "credentials.toml"')
    problems = problems_of(write(tmp_path, text), {})
    assert {p.file for p in problems} == {str(creds)}
    assert set(by_key(problems)) == {
        "connections.acme-qbo.client_id",
        "connections.acme-qbo.client_secret",
    }


def test_no_source_for_a_secret_is_a_problem(tmp_path: Path) -> None:
    text = edit(BASE, 'client_secret_env = "ACME_QBO_SECRET"\n', "")
    problem = only_problem(write(tmp_path, text))
    assert problem.key == f"{CONN}.client_secret"
    assert "client_secret_env" in problem.message
    assert "credentials file" in problem.message


def test_constructed_connection_config_has_sane_defaults() -> None:
    conn = QuickBooksConnectionConfig(
        name="c",
        tenant="t",
        client_id=Secret("i"),
        client_secret=Secret("s"),
        redirect_uri="https://example.com/cb",
        environment="sandbox",
    )
    assert conn.api_base == "https://sandbox-quickbooks.api.intuit.com/v3"
    assert conn.rate_limit.per_minute == 500


# ----------------------------------------------------------------------------- xero


def test_xero_connection_values_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, XERO), environ=ENV)
    conn = xero(config)
    assert (conn.name, conn.tenant, conn.kind) == ("acme-xero", "acme", "xero")
    assert config.tenants[0].connections == (conn,)
    assert conn.xero_tenant_id == XERO_TENANT_ID
    assert conn.client_id.reveal() == XERO_CLIENT_ID
    assert conn.client_secret.reveal() == XERO_SECRET
    assert conn.redirect_uri == "https://example.com/arsync/callback"
    assert conn.scopes == (
        "offline_access",
        "accounting.transactions",
        "accounting.contacts",
        "accounting.settings.read",
    )
    assert conn.api_base == "https://api.xero.com/api.xro/2.0"
    assert conn.identity_base == "https://api.xero.com"
    assert conn.token_endpoint == "https://identity.xero.com/connect/token"
    assert conn.authorize_endpoint == "https://login.xero.com/identity/connect/authorize"
    assert (conn.base_url, conn.identity_url, conn.token_url, conn.authorize_url) == (None, None, None, None)
    assert conn.sync_interval_minutes == 15
    assert conn.entities == ENTITIES
    assert conn.overlap_seconds == 300
    assert conn.delete_guard_ratio == 0.5
    assert conn.timeout_seconds == 60
    assert conn.page_size == 1000
    assert conn.rate_limit == XeroRateLimitConfig(per_minute=60, per_day=5000, concurrent=5, app_per_minute=10000)


def test_xero_connection_with_every_key(tmp_path: Path) -> None:
    text = edit(XERO, XERO_TENANT_ID, XERO_TENANT_ID.upper())
    text += (
        'scopes = ["offline_access", "accounting.transactions.read", "accounting.contacts.read"]\n'
        'base_url = "http://127.0.0.1:8082/api.xro/2.0/"\n'
        'identity_url = "http://127.0.0.1:8082/"\n'
        'token_url = "http://127.0.0.1:8082/connect/token"\n'
        'authorize_url = "http://127.0.0.1:8082/identity/connect/authorize"\n'
        'entities = ["invoice", "customer"]\n'
        "overlap_seconds = 60\n"
        "delete_guard_ratio = 0.25\n"
        "timeout_seconds = 12.5\n"
        "page_size = 100\n"
        f"[{XCONN}.rate_limit]\n"
        "per_minute = 30\nper_day = 2000\nconcurrent = 2\napp_per_minute = 5000\n"
    )
    conn = xero(load_config(write(tmp_path, text), environ=ENV))
    assert conn.xero_tenant_id == XERO_TENANT_ID  # normalised to lower case
    assert conn.scopes == ("offline_access", "accounting.transactions.read", "accounting.contacts.read")
    assert conn.api_base == "http://127.0.0.1:8082/api.xro/2.0"
    assert conn.identity_base == "http://127.0.0.1:8082"
    assert conn.token_endpoint == "http://127.0.0.1:8082/connect/token"
    assert conn.authorize_endpoint == "http://127.0.0.1:8082/identity/connect/authorize"
    assert conn.entities == ("invoice", "customer")
    assert (conn.overlap_seconds, conn.delete_guard_ratio, conn.timeout_seconds) == (60, 0.25, 12.5)
    assert conn.page_size == 100
    assert conn.rate_limit == XeroRateLimitConfig(per_minute=30, per_day=2000, concurrent=2, app_per_minute=5000)


def test_xero_tenant_id_may_be_left_out_until_connect(tmp_path: Path) -> None:
    text = edit(XERO, f'xero_tenant_id = "{XERO_TENANT_ID}"\n', "")
    conn = xero(load_config(write(tmp_path, text), environ=ENV))
    assert conn.xero_tenant_id is None


def test_xero_config_is_frozen(tmp_path: Path) -> None:
    conn = xero(load_config(write(tmp_path, XERO), environ=ENV))
    with pytest.raises(AttributeError):
        conn.page_size = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        conn.rate_limit.per_minute = 1  # type: ignore[misc]


def test_quickbooks_and_xero_side_by_side(tmp_path: Path) -> None:
    xero_part = XERO[XERO.index("[tenants.acme.connections.acme-xero]") :]
    config = load_config(write(tmp_path, BASE + xero_part), environ=ENV)
    assert [c.name for c in config.connections()] == ["acme-qbo", "acme-xero"]
    assert qbo(config).realm_id == "9341453050000000"
    assert xero(config).xero_tenant_id == XERO_TENANT_ID
    with pytest.raises(UnknownConnectionError, match="known connections: acme-qbo, acme-xero"):
        config.connection("acme-sage")


def test_constructed_xero_connection_config_has_sane_defaults() -> None:
    conn = XeroConnectionConfig(
        name="c",
        tenant="t",
        client_id=Secret("i"),
        client_secret=Secret("s"),
        redirect_uri="https://example.com/cb",
    )
    assert conn.kind == "xero"
    assert conn.xero_tenant_id is None
    assert conn.api_base == "https://api.xero.com/api.xro/2.0"
    assert conn.identity_base == "https://api.xero.com"
    assert conn.page_size == 1000
    assert conn.rate_limit.per_day == 5000
    assert conn.rate_limit.app_per_minute == 10000


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        (f'xero_tenant_id = "{XERO_TENANT_ID}"', 'xero_tenant_id = "acme-ltd"', "xero_tenant_id", "a UUID such as"),
        (
            f'xero_tenant_id = "{XERO_TENANT_ID}"',
            f'xero_tenant_id = "{XERO_TENANT_ID[:-1]}"',
            "xero_tenant_id",
            "a UUID such as",
        ),
        (
            f'xero_tenant_id = "{XERO_TENANT_ID}"',
            f'xero_tenant_id = "{{{XERO_TENANT_ID}}}"',
            "xero_tenant_id",
            "a UUID such as",
        ),
        (
            f'xero_tenant_id = "{XERO_TENANT_ID}"',
            "xero_tenant_id = 42",
            "xero_tenant_id",
            "must be a string, not an integer (put the value in double quotes)",
        ),
        ("sync_interval_minutes = 15", "page_size = 0", "page_size", "greater than or equal to 1 (got 0)"),
        ("sync_interval_minutes = 15", "page_size = 1001", "page_size", "less than or equal to 1000 (got 1001)"),
        ("sync_interval_minutes = 15", 'page_size = "100"', "page_size", "must be an integer, not a string"),
        (
            "sync_interval_minutes = 15",
            'scopes = ["accounting.transactions"]',
            "scopes",
            "must include 'offline_access'",
        ),
        (
            "sync_interval_minutes = 15",
            'scopes = ["offline_access", "offline_access"]',
            "scopes",
            "offline_access more than once",
        ),
        ("sync_interval_minutes = 15", "scopes = []", "scopes", "must not be empty"),
        ("sync_interval_minutes = 15", 'scopes = "offline_access"', "scopes", "must be an array, not a string"),
        (
            "sync_interval_minutes = 15",
            'scopes = ["offline_access accounting.contacts"]',
            "scopes[0]",
            'one scope per array item, e.g. scopes = ["offline_access", "accounting.contacts"]',
        ),
        ("sync_interval_minutes = 15", 'scopes = ["offline_access", ""]', "scopes[1]", "is not an OAuth scope name"),
        ("sync_interval_minutes = 15", 'identity_url = "api.xero.com"', "identity_url", "http:// or https://"),
        (
            "sync_interval_minutes = 15",
            'authorize_url = "ftp://login.xero.com"',
            "authorize_url",
            "http:// or https://",
        ),
        (
            "sync_interval_minutes = 15",
            'entities = ["invoice", "bill"]',
            "entities[1]",
            "'customer', 'invoice', 'payment' or 'credit_note'",
        ),
        (
            "sync_interval_minutes = 15",
            "rate_limit = { per_minute = 100, per_day = 50 }",
            "rate_limit",
            "per_day (50) must be at least per_minute (100)",
        ),
        (
            "sync_interval_minutes = 15",
            "rate_limit = { per_minute = 100, app_per_minute = 50 }",
            "rate_limit",
            "app_per_minute (50) must be at least per_minute (100)",
        ),
        (
            "sync_interval_minutes = 15",
            "rate_limit = { concurrent = 0 }",
            "rate_limit.concurrent",
            "greater than or equal to 1",
        ),
        ('redirect_uri = "https://example.com/arsync/callback"\n', "", "redirect_uri", "missing required key"),
    ],
)
def test_xero_value_problems_name_the_dotted_key(tmp_path: Path, old: str, new: str, key: str, fragment: str) -> None:
    path = write(tmp_path, edit(XERO, old, new))
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == f"{XCONN}.{key}"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("base", "line", "key", "fragments"),
    [
        (
            XERO,
            'realm_id = "9341453050000000"',
            f"{XCONN}.realm_id",
            [
                "unknown key 'realm_id' for a 'xero' connection",
                "only to 'quickbooks' connections",
                "did you mean 'xero_tenant_id'?",
            ],
        ),
        (
            XERO,
            'environment = "sandbox"',
            f"{XCONN}.environment",
            [
                "unknown key 'environment' for a 'xero' connection",
                "only to 'quickbooks' connections",
                "known keys:",
                "xero_tenant_id",
            ],
        ),
        (
            XERO,
            "minor_version = 75",
            f"{XCONN}.minor_version",
            ["unknown key 'minor_version' for a 'xero' connection", "only to 'quickbooks' connections"],
        ),
        (
            XERO,
            "rate_limit = { per_second = 5 }",
            f"{XCONN}.rate_limit.per_second",
            ["unknown key 'per_second' for a 'xero' connection", "did you mean 'per_minute'?"],
        ),
        (
            XERO,
            "sync_intervall_minutes = 5",
            f"{XCONN}.sync_intervall_minutes",
            ["unknown key 'sync_intervall_minutes' for a 'xero' connection", "did you mean 'sync_interval_minutes'?"],
        ),
        (
            BASE,
            f'xero_tenant_id = "{XERO_TENANT_ID}"',
            f"{CONN}.xero_tenant_id",
            [
                "unknown key 'xero_tenant_id' for a 'quickbooks' connection",
                "only to 'xero' connections",
                "did you mean 'realm_id'?",
            ],
        ),
        (
            BASE,
            "page_size = 100",
            f"{CONN}.page_size",
            ["unknown key 'page_size' for a 'quickbooks' connection", "only to 'xero' connections", "known keys:"],
        ),
        (
            BASE,
            'scopes = ["offline_access"]',
            f"{CONN}.scopes",
            ["unknown key 'scopes' for a 'quickbooks' connection", "only to 'xero' connections"],
        ),
        (
            BASE,
            "rate_limit = { per_day = 100 }",
            f"{CONN}.rate_limit.per_day",
            [
                "unknown key 'per_day' for a 'quickbooks' connection",
                "only to 'xero' connections",
                "known keys: per_second, per_minute, concurrent",
            ],
        ),
    ],
)
def test_keys_of_the_other_kind_are_unknown_keys(
    tmp_path: Path, base: str, line: str, key: str, fragments: list[str]
) -> None:
    path = write(tmp_path, base + line + "\n")
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == key
    for fragment in fragments:
        assert fragment in problem.message


def test_xero_inline_client_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    text = edit(XERO, 'client_secret_env = "ACME_XERO_SECRET"', f'client_secret = "{XERO_SECRET}"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENV)
    (problem,) = caught.value.problems
    assert problem.file == str(path)
    assert problem.key == f"{XCONN}.client_secret"
    assert "environment variable or the credentials file" in problem.message
    assert XERO_SECRET not in "".join(traceback.format_exception(caught.value))
    assert XERO_SECRET not in repr(caught.value)


def test_xero_unset_environment_variable_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, XERO)
    problem = only_problem(path, {"ACME_XERO_ID": XERO_CLIENT_ID})
    assert problem.file == str(path)
    assert problem.key == f"{XCONN}.client_secret_env"
    assert "ACME_XERO_SECRET is not set" in problem.message


def test_xero_secrets_from_the_credentials_file(tmp_path: Path) -> None:
    write(
        tmp_path / "secrets",
        f'[connections.acme-xero]\nclient_id = "{XERO_CLIENT_ID}"\nclient_secret = "{XERO_SECRET}"\n',
        "credentials.toml",
    )
    text = edit(XERO, 'client_id_env = "ACME_XERO_ID"\n', "")
    text = edit(text, 'client_secret_env = "ACME_XERO_SECRET"\n', "")
    text = edit(text, "[tenants.acme]", '[credentials]\nfile = "secrets/credentials.toml"\n\n[tenants.acme]')
    conn = load_config(write(tmp_path, text), environ={}).connection("acme-xero")
    assert conn.client_id.reveal() == XERO_CLIENT_ID
    assert conn.client_secret.reveal() == XERO_SECRET


def test_xero_missing_entry_in_the_credentials_file_names_that_file(tmp_path: Path) -> None:
    creds = write(tmp_path, f'[connections.acme-xero]\nclient_id = "{XERO_CLIENT_ID}"\n', "credentials.toml")
    text = edit(XERO, 'client_id_env = "ACME_XERO_ID"\n', "")
    text = edit(text, 'client_secret_env = "ACME_XERO_SECRET"\n', "")
    text = edit(text, "[tenants.acme]", '[credentials]\nfile = "credentials.toml"\n\n[tenants.acme]')
    problem = only_problem(write(tmp_path, text), {})
    assert problem.file == str(creds)
    assert problem.key == "connections.acme-xero.client_secret"


def test_xero_secret_is_never_printed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, XERO), environ=ENV)
    conn = config.connection("acme-xero")
    for text in (repr(config), str(config), repr(conn), str(conn), f"{conn.client_secret}"):
        assert XERO_SECRET not in text
        assert XERO_CLIENT_ID not in text


def test_xero_and_quickbooks_problems_are_reported_together(tmp_path: Path) -> None:
    xero_part = XERO[XERO.index("[tenants.acme.connections.acme-xero]") :]
    xero_part = edit(xero_part, f'xero_tenant_id = "{XERO_TENANT_ID}"', 'xero_tenant_id = "nope"')
    xero_part += 'realm_id = "1"\npage_size = 5000\n'
    text = edit(BASE, 'realm_id = "9341453050000000"', f'xero_tenant_id = "{XERO_TENANT_ID}"') + xero_part
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert {p.file for p in problems} == {str(path)}
    assert set(by_key(problems)) == {
        f"{CONN}.xero_tenant_id",
        f"{XCONN}.xero_tenant_id",
        f"{XCONN}.realm_id",
        f"{XCONN}.page_size",
    }


def test_duplicate_connection_names_across_kinds(tmp_path: Path) -> None:
    text = BASE + (
        '[tenants.other]\ntimezone = "UTC"\nhome_currency = "EUR"\n'
        "[tenants.other.connections.acme-qbo]\n"
        'kind = "xero"\nclient_id_env = "ACME_XERO_ID"\nclient_secret_env = "ACME_XERO_SECRET"\n'
        'redirect_uri = "https://example.com/cb"\n'
    )
    problem = only_problem(write(tmp_path, text))
    assert problem.key == "tenants.other.connections.acme-qbo"
    assert "already used by tenant 'acme'" in problem.message
