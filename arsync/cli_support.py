"""What every ``arsync`` command shares: the consoles, the --config option, errors, the app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from arsync.bootstrap import App, bootstrap
from arsync.config import ConfigError
from sync.db import DatabaseNotMigratedError

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="ARSYNC_CONFIG",
        help="The TOML config file.",
        show_default=True,
    ),
]
DEFAULT_CONFIG = Path("arsync.toml")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (the message as plain text: config keys like ``[tenants.x]`` are not markup)."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    return typer.Exit(code)


@contextmanager
def open_app(config: Path, *, migrated: bool = True) -> Iterator[App]:
    try:
        application = bootstrap(config)
    except ConfigError as exc:
        raise fail(f"invalid configuration:\n{exc}") from None
    try:
        if migrated:
            application.require_migrated()
            application.register()
        yield application
    except DatabaseNotMigratedError as exc:
        raise fail(str(exc)) from None
    finally:
        application.engine.dispose()


@contextmanager
def ledger_scope(config: Path, tenant: str | None) -> Iterator[tuple[App, list[str]]]:
    """The app and the connections a customer, invoice or task is looked up in (the tenant's, or all).

    A reference that matches nothing, or a value refused (a ``ValueError``), fails with its message.
    """
    with open_app(config) as application:
        try:
            chosen = [application.config.tenant(tenant)] if tenant else list(application.config.tenants)
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        try:
            yield application, [c.name for t in chosen for c in t.connections]
        except ValueError as exc:
            raise fail(str(exc)) from None


def parse_date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} {value!r} is not a date (YYYY-MM-DD)") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
