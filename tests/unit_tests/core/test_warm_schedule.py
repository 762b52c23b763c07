"""Warm schedules: parsing, open windows in their own time zone, the next change, overlapping
windows, open time for the cost model, and min_containers ahead of a window."""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from deploy.core.schedule import WarmSchedule
from deploy.settings.settings import Settings

PARIS = ZoneInfo("Europe/Paris")
OFFICE = "0 9 * * mon-fri 9h Europe/Paris"


def at(*args: int, tz: dt.tzinfo = PARIS) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        ((2026, 11, 25, 8, 59), False),  # Wednesday, before
        ((2026, 11, 25, 9, 0), True),  # the start itself
        ((2026, 11, 25, 17, 59), True),
        ((2026, 11, 25, 18, 0), False),  # the end is outside
        ((2026, 11, 28, 12, 0), False),  # Saturday
        ((2026, 7, 15, 9, 30), True),  # summer time: still 09:00 Paris
    ],
)
def test_windows_are_open_in_their_own_time_zone(when: tuple[int, ...], open_: bool) -> None:
    assert WarmSchedule.parse(OFFICE).is_open(at(*when)) is open_


def test_next_change_is_the_window_s_end_inside_and_the_next_start_outside() -> None:
    schedule = WarmSchedule.parse(OFFICE)
    assert schedule.next_change(at(2026, 11, 25, 12, 0)) == at(2026, 11, 25, 18, 0)
    assert schedule.next_change(at(2026, 11, 27, 19, 0)) == at(2026, 11, 30, 9, 0)  # Fri->Mon


def test_overlapping_and_back_to_back_windows_merge() -> None:
    schedule = WarmSchedule.parse("0 9 * * * 2h UTC; 0 10 * * * 3h UTC; 0 13 * * * 1h UTC")
    start = at(2026, 11, 25, 9, 30, tz=dt.timezone.utc)
    assert schedule.next_change(start) == at(2026, 11, 25, 14, 0, tz=dt.timezone.utc)


def test_open_seconds_count_a_week_of_office_hours() -> None:
    schedule = WarmSchedule.parse(OFFICE)
    monday = at(2026, 11, 23, 0, 0)
    assert schedule.open_seconds(monday, monday + 7 * 86400) == 5 * 9 * 3600


def test_min_containers_rise_a_boot_ahead_of_a_window_and_keep_the_base() -> None:
    schedule = WarmSchedule.parse(OFFICE)
    before = at(2026, 11, 25, 8, 55)
    assert schedule.min_containers(before) == 0
    assert schedule.min_containers(before, lead=600) == 1  # the window opens within 10 min
    assert schedule.min_containers(at(2026, 11, 28, 12, 0), base=1) == 1  # integrated: always


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0 9 * * mon-fri", "a window is"),
        ("0 9 * * xyz 9h", "not a cron expression"),
        ("0 9 * * mon-fri nine Europe/Paris", "not a window length"),
        ("0 9 * * mon-fri 9h Mars/Olympus", "not a time zone"),
        ("0 9 * * mon-fri 8d", "between 1 minute and 7 days"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_setting(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(warm_schedule=text)
    assert "VLLM_WARM_SCHEDULE" in str(info.value) and fragment in str(info.value)


def test_status_description_names_windows_state_and_next_change() -> None:
    described = WarmSchedule.parse(OFFICE).describe(at(2026, 11, 25, 12, 0))
    assert described == {
        "windows": ["0 9 * * mon-fri 9h Europe/Paris"],
        "open": True,
        "next_change": "2026-11-25T17:00:00+00:00",
    }


# -- schedules that never fire --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "0 9 30 2 * 9h UTC",  # 30 February
        "0 9 31 4 * 1h Europe/Paris",  # 31 April
        "0 9 * * mon-fri 9h UTC; 0 9 31 2,4,6,9,11 * 1h UTC",  # the second window never opens
    ],
)
def test_a_window_that_never_opens_is_refused_at_parse_time(text: str) -> None:
    with pytest.raises(ValueError, match="never opens") as info:
        WarmSchedule.parse(text)
    assert "31" in str(info.value) or "30" in str(info.value)  # names the window
    with pytest.raises(ValidationError) as settings_info:
        Settings(warm_schedule=text)
    assert "VLLM_WARM_SCHEDULE" in str(settings_info.value)
    assert "never opens" in str(settings_info.value)


def test_a_rare_window_still_parses() -> None:
    schedule = WarmSchedule.parse("0 9 29 2 * 9h UTC")  # once every four years
    assert schedule.is_open(at(2028, 2, 29, 10, 0, tz=dt.timezone.utc))
    assert not schedule.is_open(at(2027, 3, 1, 10, 0, tz=dt.timezone.utc))


def _never() -> WarmSchedule:
    """A schedule the parser would refuse, as one built around it (or by an older parser)."""
    from deploy.core.schedule import Window

    return WarmSchedule([Window("0 9 30 2 *", dt.timedelta(hours=9), "UTC")])


def test_a_window_that_never_opens_reads_as_closed_at_run_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    schedule = WarmSchedule([*_never().windows, *WarmSchedule.parse(OFFICE).windows])
    wednesday_noon, saturday = at(2026, 11, 25, 12, 0), at(2026, 11, 28, 12, 0)
    assert schedule.is_open(wednesday_noon) and not schedule.is_open(saturday)
    assert schedule.next_change(wednesday_noon) == at(2026, 11, 25, 18, 0)
    assert schedule.min_containers(saturday) == 0
    assert schedule.open_seconds(saturday, saturday + 3600) == 0
    alone = _never()
    assert not alone.is_open(saturday) and alone.next_change(saturday) is None
    assert alone.describe(saturday)["open"] is False
    assert "never opens" in caplog.text  # logged, not raised


async def test_status_health_and_warmup_answer_with_a_schedule_that_never_opens() -> None:
    from deploy.engine.process import EngineConfig
    from deploy.transports.local import LocalTransport
    from deploy.wrapper import create_app
    from tests.unit_tests.wrapper_fake import client_for, make_settings

    class Engine:  # never started here: warmup's start waits on nothing real
        pid, base_url, running = 1, "http://engine", False

        async def start(self) -> None:
            await asyncio.sleep(3600)

        def is_running(self) -> bool:
            return False

        def stop(self, grace: float = 15.0) -> None:
            return None

        async def aclose(self) -> None:
            return None

    transport = LocalTransport(EngineConfig(model="m", served_model_name="m"), schedule=_never())
    engine = Engine()
    engine.config = transport.engine.config  # type: ignore[attr-defined]
    transport.engine = engine  # type: ignore[assignment]
    app = create_app(transport, make_settings(state_url="memory://"))
    try:
        async with client_for(app, raise_app_exceptions=False) as client:
            health = await client.get("/health")
            status = await client.get("/status")
            warmup = await client.post("/warmup")
        assert health.status_code == 200, health.text
        assert status.status_code == 200, status.text
        assert warmup.status_code == 202, warmup.text
        assert status.json()["warm_schedule"]["open"] is False
        assert await transport.apply_schedule() is False
    finally:
        if transport._start_task is not None:
            transport._start_task.cancel()
