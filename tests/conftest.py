from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FakeClock, database_url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on SQLite and on PostgreSQL."""
    yield from database_url(request.param, tmp_path)


# --- a real SMTP server in the test process (tests/smtp.py) ------------------------------------

# Imported here rather than at the top so this section stays a plain append.
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from tests.smtp import SmtpServer, running_smtp_server  # noqa: E402

SMTP_USER = "ar-robot"
SMTP_PASSWORD = "correct horse battery staple"


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A plain SMTP server (no TLS, no AUTH) on 127.0.0.1; read ``smtp_server.received``."""
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def smtp_secure_server() -> Iterator[SmtpServer]:
    """An SMTP server that offers STARTTLS (trustme CA) and requires AUTH as SMTP_USER / SMTP_PASSWORD."""
    with running_smtp_server(tls="starttls", user=SMTP_USER, password=SMTP_PASSWORD) as server:
        yield server


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., SmtpServer]]:
    """Starts SMTP servers with any options of ``tests.smtp.SmtpServer``; all are stopped after the test."""
    started: list[SmtpServer] = []

    def start(**options: Any) -> SmtpServer:
        server = SmtpServer(**options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
