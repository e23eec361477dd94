"""Send windows, business days and pacing: pure arithmetic with the clock passed in."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from collect.send_window import (
    Pacing,
    SendWindow,
    earliest_send,
    is_business_day,
    local_instant,
    next_opening,
)

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
US = SendWindow(country="US")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --------------------------------------------------------------------------- business days


def test_weekdays_are_business_days_and_weekends_are_not() -> None:
    window = SendWindow()
    assert is_business_day(date(2026, 11, 20), window)  # Friday
    assert not is_business_day(date(2026, 11, 21), window)  # Saturday
    assert not is_business_day(date(2026, 11, 22), window)  # Sunday
    assert is_business_day(date(2026, 11, 21), SendWindow(business_days_only=False))


def test_a_us_public_holiday_is_not_a_business_day() -> None:
    thanksgiving = date(2026, 11, 26)
    assert not is_business_day(thanksgiving, US)
    assert is_business_day(thanksgiving, SendWindow())  # no country: weekends only
    assert not is_business_day(date(2026, 7, 3), US)  # Independence Day observed on Friday
    assert is_business_day(date(2026, 11, 27), US)


def test_a_gb_public_holiday_is_not_a_business_day() -> None:
    england = SendWindow(country="GB", subdivision="ENG")
    scotland = SendWindow(country="GB", subdivision="SCT")
    assert not is_business_day(date(2026, 12, 28), england)  # Boxing Day observed (26th is a Saturday)
    assert not is_business_day(date(2026, 4, 6), england)  # Easter Monday: England, not Scotland
    assert is_business_day(date(2026, 4, 6), scotland)
    assert not is_business_day(date(2026, 11, 30), scotland)  # St Andrew's Day: Scotland only
    assert is_business_day(date(2026, 11, 30), england)


def test_a_country_with_another_weekend() -> None:
    israel = SendWindow(country="IL")
    assert not is_business_day(date(2026, 11, 20), israel)  # Friday
    assert is_business_day(date(2026, 11, 22), israel)  # Sunday


def test_holidays_move_next_opening_past_them() -> None:
    # Wednesday 25 Nov 2026 after hours -> Thursday is Thanksgiving -> Friday 09:00 EST.
    assert next_opening(US, NEW_YORK, utc(2026, 11, 25, 23, 0)) == utc(2026, 11, 27, 14, 0)
    # Christmas Eve after hours in London -> Christmas, Boxing Day (Sat), Sunday, Boxing Day observed -> Tue 29th.
    england = SendWindow(country="GB", subdivision="ENG")
    assert next_opening(england, LONDON, utc(2026, 12, 24, 18, 0)) == utc(2026, 12, 29, 9, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"country": "XX"}, "unknown country code 'XX'"),
        ({"country": "US", "subdivision": "ZZ"}, "unknown subdivision 'ZZ' for country 'US'"),
        ({"subdivision": "ENG"}, "needs a country"),
        ({"start": time(17), "end": time(9)}, "must be before its end"),
    ],
)
def test_invalid_windows_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SendWindow(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the window


def test_inside_the_window_is_now() -> None:
    now = utc(2026, 11, 20, 15, 0)  # Friday 10:00 EST
    assert next_opening(US, NEW_YORK, now) == now


def test_before_the_window_is_todays_start() -> None:
    assert next_opening(US, NEW_YORK, utc(2026, 11, 20, 12, 0)) == utc(2026, 11, 20, 14, 0)  # 07:00 -> 09:00 EST


def test_the_end_of_the_window_is_outside_it() -> None:
    # Friday 17:00 EST exactly -> Monday 09:00 EST
    assert next_opening(US, NEW_YORK, utc(2026, 11, 20, 22, 0)) == utc(2026, 11, 23, 14, 0)
    assert next_opening(US, NEW_YORK, utc(2026, 11, 20, 21, 59)) == utc(2026, 11, 20, 21, 59)


def test_the_weekend_waits_for_monday() -> None:
    assert next_opening(US, NEW_YORK, utc(2026, 11, 21, 15, 0)) == utc(2026, 11, 23, 14, 0)


def test_the_local_day_decides_not_the_utc_day() -> None:
    # 02:00 UTC on Saturday is still Friday 21:00 in New York: after hours, so Monday.
    assert next_opening(US, NEW_YORK, utc(2026, 11, 21, 2, 0)) == utc(2026, 11, 23, 14, 0)
    # 21:00 UTC on Sunday is already Monday 08:00 in Sydney (AEDT): it opens at 09:00 local, 22:00 UTC Sunday.
    sydney = ZoneInfo("Australia/Sydney")
    assert next_opening(SendWindow(), sydney, utc(2026, 11, 22, 21, 0)) == utc(2026, 11, 22, 22, 0)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_opening(US, NEW_YORK, datetime(2026, 11, 20, 15, 0))


def test_the_result_is_in_utc() -> None:
    now = datetime(2026, 11, 20, 10, 0, tzinfo=NEW_YORK)
    opening = next_opening(US, NEW_YORK, now)
    assert opening.tzinfo is UTC and opening == now


# --------------------------------------------------------------------------- daylight saving (America/New_York)


def test_spring_forward_changes_the_utc_hour_of_the_opening() -> None:
    # Friday 6 March 2026 after hours (EST) -> Monday 9 March 09:00 EDT, which is 13:00 UTC, not 14:00.
    assert next_opening(US, NEW_YORK, utc(2026, 3, 6, 23, 0)) == utc(2026, 3, 9, 13, 0)


def test_a_start_in_the_spring_forward_gap_moves_to_the_first_valid_time() -> None:
    # On Sunday 8 March 2026 clocks go from 02:00 EST to 03:00 EDT; 02:30 does not exist.
    every_day = SendWindow(start=time(2, 30), end=time(5), business_days_only=False)
    opening = next_opening(every_day, NEW_YORK, utc(2026, 3, 8, 5, 0))  # 00:00 EST
    assert opening == utc(2026, 3, 8, 7, 0)
    assert opening.astimezone(NEW_YORK).replace(tzinfo=None) == datetime(2026, 3, 8, 3, 0)
    assert local_instant(date(2026, 3, 8), time(2, 0), NEW_YORK) == utc(2026, 3, 8, 7, 0)
    assert local_instant(date(2026, 3, 8), time(3, 0), NEW_YORK) == utc(2026, 3, 8, 7, 0)


def test_fall_back_changes_the_utc_hour_and_takes_the_first_repeated_hour() -> None:
    # Friday 30 Oct 2026 after hours (EDT) -> Monday 2 Nov 09:00 EST, which is 14:00 UTC, not 13:00.
    assert next_opening(US, NEW_YORK, utc(2026, 10, 30, 22, 0)) == utc(2026, 11, 2, 14, 0)
    # On Sunday 1 Nov 2026 01:30 happens twice; the window opens at the first (EDT, 05:30 UTC).
    every_day = SendWindow(start=time(1, 30), end=time(5), business_days_only=False)
    assert next_opening(every_day, NEW_YORK, utc(2026, 11, 1, 4, 0)) == utc(2026, 11, 1, 5, 30)
    # Inside the second 01:30 hour (EST) the window is open.
    second = utc(2026, 11, 1, 6, 45)
    assert next_opening(every_day, NEW_YORK, second) == second


# --------------------------------------------------------------------------- pacing


def test_no_pacing_limits_is_the_window() -> None:
    now = utc(2026, 11, 20, 15, 0)
    assert earliest_send(US, NEW_YORK, Pacing(), now, sent_today=500, last_to_customer=None) == now


def test_the_min_gap_holds_back_the_next_message_to_a_customer() -> None:
    last = utc(2026, 11, 19, 16, 0)  # Thursday 11:00 EST
    now = utc(2026, 11, 20, 14, 30)  # Friday 09:30 EST
    pacing = Pacing(min_gap=timedelta(hours=24))
    assert earliest_send(US, NEW_YORK, pacing, now, sent_today=0, last_to_customer=last) == utc(2026, 11, 20, 16, 0)
    # Gap ending after hours -> the next business day's opening.
    late = utc(2026, 11, 19, 22, 30)  # Thursday 17:30 EST: the gap ends Friday after hours
    assert earliest_send(US, NEW_YORK, pacing, now, sent_today=0, last_to_customer=late) == utc(2026, 11, 23, 14, 0)
    # A gap already served changes nothing.
    old = utc(2026, 11, 1, 12, 0)
    assert earliest_send(US, NEW_YORK, pacing, now, sent_today=0, last_to_customer=old) == now


def test_the_daily_cap_reached_waits_for_the_next_business_days_opening() -> None:
    pacing = Pacing(daily_cap=100)
    now = utc(2026, 11, 20, 15, 0)  # Friday 10:00 EST
    assert earliest_send(US, NEW_YORK, pacing, now, sent_today=99, last_to_customer=None) == now
    assert earliest_send(US, NEW_YORK, pacing, now, sent_today=100, last_to_customer=None) == utc(2026, 11, 23, 14, 0)
    # The cap of Wednesday before Thanksgiving -> Friday.
    wednesday = utc(2026, 11, 25, 15, 0)
    assert earliest_send(US, NEW_YORK, pacing, wednesday, sent_today=100, last_to_customer=None) == utc(
        2026, 11, 27, 14, 0
    )


def test_cap_and_gap_together_take_the_later() -> None:
    pacing = Pacing(daily_cap=10, min_gap=timedelta(days=4))
    now = utc(2026, 11, 20, 15, 0)
    last = utc(2026, 11, 20, 14, 0)  # this morning: four days -> Tuesday 09:00 EST
    got = earliest_send(US, NEW_YORK, pacing, now, sent_today=10, last_to_customer=last)
    assert got == utc(2026, 11, 24, 14, 0)


def test_invalid_pacing_is_refused() -> None:
    with pytest.raises(ValueError, match="daily_cap"):
        Pacing(daily_cap=0)
    with pytest.raises(ValueError, match="min_gap"):
        Pacing(min_gap=timedelta(hours=-1))
    with pytest.raises(ValueError, match="sent_today"):
        earliest_send(US, NEW_YORK, Pacing(), utc(2026, 11, 20, 15), sent_today=-1, last_to_customer=None)
