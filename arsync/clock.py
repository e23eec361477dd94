"""The real clock and sleeper; tests pass their own."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def real_sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)
