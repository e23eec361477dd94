"""When a dunning message may go out: send windows, business days and pacing.

Pure arithmetic: no I/O, no clock of its own. Every ``now`` is an aware
datetime passed in by the caller, and every result is an aware datetime in UTC.

- A :class:`SendWindow` is a range of local wall-clock times (``start`` to
  ``end``) in the customer's timezone, on business days only unless told
  otherwise. Business days leave out the country's weekend and its public
  holidays (the ``holidays`` package, optionally per subdivision).
- :func:`next_opening` is the first instant at or after ``now`` inside the
  window. A window edge that falls in a daylight-saving gap moves to the first
  valid local time after the gap; one that falls in a repeated hour takes its
  first occurrence.
- :class:`Pacing` caps the messages a tenant sends per local day and keeps a
  minimum gap between two messages to one customer; :func:`earliest_send`
  combines it with the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

# A calendar in which no day in two years is a business day is a configuration error, not a loop.
_SEARCH_DAYS = 2 * 366
_DEFAULT_WEEKEND = frozenset({5, 6})  # Saturday, Sunday


@lru_cache(maxsize=512)
def _calendar(country: str, subdivision: str | None, year: int) -> holidays.HolidayBase:
    """The public holidays of ``country`` (and ``subdivision``) in ``year``, built once per key."""
    try:
        return holidays.country_holidays(country, subdiv=subdivision, years=year)
    except NotImplementedError as exc:
        if subdivision is not None and country.upper() in holidays.list_supported_countries():
            raise ValueError(f"unknown subdivision {subdivision!r} for country {country!r}") from exc
        raise ValueError(f"unknown country code {country!r} (expected an ISO 3166-1 alpha-2 code)") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class SendWindow:
    """Local hours in which messages may be sent, and on which days."""

    start: time = time(9)
    end: time = time(17)
    business_days_only: bool = True
    country: str | None = None
    subdivision: str | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("send window start and end are local wall-clock times and carry no timezone")
        if not self.start < self.end:
            raise ValueError(
                f"send window start {self.start.isoformat()} must be before its end {self.end.isoformat()}"
            )
        if self.subdivision is not None and self.country is None:
            raise ValueError(f"send window subdivision {self.subdivision!r} needs a country")
        if self.country is not None:
            # Raises ValueError naming an unknown country or subdivision now, not on the first send.
            _calendar(self.country, self.subdivision, 2000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pacing:
    """How often a tenant and a customer may be written to."""

    daily_cap: int | None = None
    min_gap: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.daily_cap is not None and self.daily_cap < 1:
            raise ValueError(f"daily_cap must be at least 1 (or unset), not {self.daily_cap}")
        if self.min_gap < timedelta(0):
            raise ValueError(f"min_gap must not be negative, not {self.min_gap}")


def is_business_day(day: date, window: SendWindow) -> bool:
    """Whether messages may go out on ``day`` under ``window``.

    Every day is one when the window is not limited to business days. Otherwise
    the country's weekend (Saturday and Sunday unless the country says
    otherwise) and its public holidays are not.
    """
    if not window.business_days_only:
        return True
    if window.country is None:
        return day.weekday() not in _DEFAULT_WEEKEND
    calendar = _calendar(window.country, window.subdivision, day.year)
    if day in calendar:
        return False
    weekend: set[int] = set(getattr(calendar, "weekend", _DEFAULT_WEEKEND))
    workdays: set[date] = set(getattr(calendar, "weekend_workdays", ()))
    return day.weekday() not in weekend or day in workdays


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, not {moment.isoformat()}")
    return moment.astimezone(UTC)


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``tz``.

    A time skipped by a daylight-saving change becomes the first valid local
    time after the gap (the moment of the change); a time that happens twice
    is its first occurrence.
    """
    wall = datetime.combine(day, at.replace(tzinfo=None))
    early = wall.replace(tzinfo=tz, fold=0)
    late = wall.replace(tzinfo=tz, fold=1)
    first = early.astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first  # valid (and, if ambiguous, the first occurrence)
    # In a gap: fold=0 reads the wall time with the offset before the change and
    # fold=1 with the offset after, so the change lies between the two instants.
    low, high = sorted((first, late.astimezone(UTC)))
    offset_before = low.astimezone(tz).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == offset_before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)  # changes happen on whole seconds


def next_opening(window: SendWindow, tz: ZoneInfo, now: datetime) -> datetime:
    """``now`` (in UTC) if it lies inside ``window`` on a business day in ``tz``, else the window's next start."""
    current = _utc(now, "now")
    today = current.astimezone(tz).date()
    for offset in range(_SEARCH_DAYS):
        day = today + timedelta(days=offset)
        if not is_business_day(day, window):
            continue
        opens = local_instant(day, window.start, tz)
        if offset > 0 or current < opens:
            return opens
        if current < local_instant(day, window.end, tz):
            return current
    raise ValueError(f"send window {window} has no business day in the {_SEARCH_DAYS} days after {today.isoformat()}")


def earliest_send(
    window: SendWindow,
    tz: ZoneInfo,
    pacing: Pacing,
    now: datetime,
    *,
    sent_today: int,
    last_to_customer: datetime | None,
) -> datetime:
    """The earliest instant (UTC) at which the next message to this customer may go.

    ``sent_today`` counts the tenant's messages on the local day of ``now`` in
    ``tz``; once it reaches ``pacing.daily_cap`` nothing more goes that day and
    the answer is the next business day's opening. ``last_to_customer`` is when
    the previous message to this customer went, if any; the next one waits
    ``pacing.min_gap`` after it. The result always lies inside the window.
    """
    if sent_today < 0:
        raise ValueError(f"sent_today must not be negative, not {sent_today}")
    candidate = _utc(now, "now")
    if last_to_customer is not None:
        candidate = max(candidate, _utc(last_to_customer, "last_to_customer") + pacing.min_gap)
    if pacing.daily_cap is not None and sent_today >= pacing.daily_cap:
        tomorrow = _utc(now, "now").astimezone(tz).date() + timedelta(days=1)
        candidate = max(candidate, local_instant(tomorrow, time(0), tz))
    return next_opening(window, tz, candidate)
