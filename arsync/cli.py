"""The ``arsync`` command line."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from arsync import cli_collect, cli_collections, cli_dunning, cli_reconcile, cli_worklist
from arsync.bootstrap import App, bootstrap
from arsync.cli_support import DEFAULT_CONFIG, ConfigOption, console, err, fail, open_app, parse_date
from arsync.config import ConfigError
from arsync.status import render_status
from connectors.base import ConnectorError, Entity, OAuthTokens
from connectors.xero.client import XeroAuth, choose_organisation
from sync.db import current_revision, head_revision, upgrade
from sync.engine import RunSummary, SyncEngine
from sync.store import ApplyCounts

app = typer.Typer(no_args_is_help=True, help="Accounts-receivable sync daemon.")
config_app = typer.Typer(no_args_is_help=True, help="Check the configuration.")
db_app = typer.Typer(no_args_is_help=True, help="Manage the ledger database.")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
cli_collect.register(app)
cli_reconcile.register(app)
cli_worklist.register(app)
cli_dunning.register(app)
app.add_typer(cli_collections.collections_app, name="collections")


@config_app.command("check")
def config_check(
    config: ConfigOption = DEFAULT_CONFIG,
    ledgers: Annotated[
        bool, typer.Option("--ledgers", help="Also check write-back accounts against each ledger's chart of accounts.")
    ] = False,
) -> None:
    """Validate the config and report every problem with its key and file."""
    try:
        loaded = bootstrap(config).config
    except ConfigError as exc:
        err.print(f"{len(exc.problems)} problem(s):", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem.file}: {problem.key}: {problem.message}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    names = ", ".join(c.name for c in loaded.connections()) or "none"
    console.print(f"{config}: ok ({len(loaded.tenants)} tenant(s); connections: {names})", highlight=False)
    if ledgers:
        _check_ledger_accounts(config)


def _check_ledger_accounts(config: Path) -> None:
    """Write-back accounts against each ledger (needs the database and authorised connections)."""
    found: list[str] = []
    with open_app(config) as application:
        for tenant in application.config.tenants:
            if not any(c.writeback is not None for c in tenant.connections):
                continue
            try:
                found += application.reconciler(tenant.name).account_problems()
            except ConnectorError as exc:
                found.append(f"tenant {tenant.name}: the ledger could not be read: {exc}")
    if found:
        err.print(f"{len(found)} write-back account problem(s):", highlight=False)
        for line in found:
            err.print(f"  {config}: {line}", highlight=False, markup=False)
        raise typer.Exit(1)
    console.print("write-back accounts: ok", highlight=False)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create or migrate the ledger schema to this version."""
    with open_app(config, migrated=False) as application:
        upgrade(application.engine)
        console.print(f"database at revision {current_revision(application.engine)} (head {head_revision()})")


@app.command()
def connect(
    connection: Annotated[str, typer.Argument(help="Connection name from the config.")],
    config: ConfigOption = DEFAULT_CONFIG,
    answer: Annotated[
        str | None,
        typer.Option(help="The redirect URL (or code) if already at hand; otherwise asked for."),
    ] = None,
    organisation: Annotated[
        str | None,
        typer.Option(help="Xero: the organisation (tenant id or name) when the grant reaches several."),
    ] = None,
) -> None:
    """Authorise a connection (OAuth2 authorization code) and store its tokens."""
    with open_app(config) as application:
        try:
            auth = application.auth(connection)
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        state = secrets.token_urlsafe(16)
        try:
            url = auth.authorize_url(state)
            console.print("Open this URL, approve access, then paste the URL you were redirected to:")
            console.print(url, soft_wrap=True, highlight=False)
            pasted = answer or typer.prompt("Redirect URL or code")
            tokens = auth.exchange(pasted, state)
            if isinstance(auth, XeroAuth):
                tokens = _pick_organisation(auth, tokens, organisation)
        except ConnectorError as exc:
            raise fail(f"{connection}: {exc}") from None
        application.tokens(connection).save(tokens)
        console.print(
            f"{connection}: connected to company {tokens.account_id}; "
            f"access token valid until {tokens.access_expires_at:%Y-%m-%d %H:%M} UTC"
        )


def _pick_organisation(auth: XeroAuth, tokens: OAuthTokens, wanted: str | None) -> OAuthTokens:
    """Xero grants reach organisations; the connection syncs one of them, asked for when several."""
    organisations = auth.organisations(tokens.access_token)
    chosen = choose_organisation(organisations, wanted or tokens.account_id)
    while chosen is None:
        for number, org in enumerate(organisations, 1):
            console.print(f"  {number}. {org.name} ({org.tenant_id})", highlight=False)
        pick = typer.prompt("Which organisation (number)", type=int)
        chosen = organisations[pick - 1] if 1 <= pick <= len(organisations) else None
    return replace(tokens, account_id=chosen.tenant_id)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} rows"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _report(summary: RunSummary) -> None:
    (console if summary.status == "ok" else err).print(summary.describe(), highlight=False, markup=False)


def _engine(application: App, name: str, progress: Progress) -> SyncEngine:
    """A sync engine whose pages move a progress bar per entity."""
    tasks: dict[Entity, TaskID] = {}

    def on_page(entity: Entity, counts: ApplyCounts) -> None:
        if entity not in tasks:
            tasks[entity] = progress.add_task(f"{name} {entity.value}", total=None)
        progress.advance(tasks[entity], counts.written + counts.unchanged)

    return application.sync_engine(name, on_page)


@app.command()
def sync(
    config: ConfigOption = DEFAULT_CONFIG,
    connection: Annotated[str | None, typer.Option(help="Only this connection.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Re-pull everything, not just changes.")] = False,
) -> None:
    """Pull changes (or everything, with --full) from each connection once."""
    with open_app(config) as application:
        names = [connection] if connection else [c.name for c in application.config.connections()]
        failed = False
        for name in names:
            try:
                source = application.source(name)
            except KeyError as exc:
                raise fail(str(exc.args[0])) from None
            with _progress() as progress:
                summary = _engine(application, name, progress).sync(source, full=full)
            _report(summary)
            failed |= summary.status != "ok"
        raise typer.Exit(1 if failed else 0)


@app.command()
def backfill(
    connection: Annotated[str, typer.Option(help="The connection to re-pull.")],
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[str | None, typer.Option(help="From this date (YYYY-MM-DD), by last change.")] = None,
    until: Annotated[str | None, typer.Option(help="Up to (not including) this date.")] = None,
) -> None:
    """Re-pull a window of records without moving the incremental cursor."""
    start, end = parse_date(since, "--since"), parse_date(until, "--until")
    if start and end and start >= end:
        raise fail(f"--since {since} must be before --until {until}")
    with open_app(config) as application:
        try:
            source = application.source(connection)
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        with _progress() as progress:
            summary = _engine(application, connection, progress).backfill(source, start, end)
        _report(summary)
        raise typer.Exit(0 if summary.status == "ok" else 1)


@app.command()
def status(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Each connection's last run, cursor, counts, quarantine, errors and tokens."""
    with open_app(config) as application, application.sessions() as session:
        console.print(render_status(session, application.config, application.clock()))


@app.command()
def run(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """The daemon: sync, collect, dun and write back on schedule until SIGTERM; SIGHUP reloads the config."""
    from arsync.config import load_config
    from arsync.daemon import run_daemon

    with open_app(config) as application:
        raise typer.Exit(run_daemon(application, lambda: load_config(config)))


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its config and SQLite file.")] = Path("demo-run"),
    customers: int = 200,
    invoices: int = 2000,
) -> None:
    """Run the whole flow against local QuickBooks, Xero and Stripe sandboxes and print a summary."""
    from arsync.demo import run_demo

    raise typer.Exit(run_demo(workdir, customers=customers, invoices=invoices, console=console))


def main() -> None:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    app(prog_name="arsync")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
