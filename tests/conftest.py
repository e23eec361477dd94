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
