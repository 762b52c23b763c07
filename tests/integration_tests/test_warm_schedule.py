"""A warm schedule on the live stack, with a clock the test controls: the engine is started
when a window opens, stays warm through idle time inside it, and scales to zero after."""

from __future__ import annotations

import datetime as dt
import time

import httpx

from deploy.core.schedule import WarmSchedule
from tests.integration_tests.conftest import API_KEY

PARIS = dt.timezone(dt.timedelta(hours=1))  # November: Paris is UTC+1


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now.timestamp()

    def set(self, now: dt.datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def _status(stack) -> dict:
    headers = {"authorization": f"Bearer {API_KEY}"}
    return httpx.get(stack.url + "/status", headers=headers, timeout=30).json()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_schedule_keeps_the_engine_warm_inside_a_window_and_cold_outside(stack) -> None:
    transport = stack.transport
    saved = (transport.schedule, transport.clock, transport.scaledown_window)
    stack.call(transport.scale_down)
    clock = Clock(dt.datetime(2026, 11, 25, 8, 0, tzinfo=PARIS))  # a Wednesday, 08:00
    transport.schedule = WarmSchedule.parse("0 9 * * mon-fri 9h Europe/Paris")
    transport.clock, transport.scaledown_window = clock, 1.0
    try:
        starts = _status(stack)["cold_starts"]
        assert stack.call(transport.apply_schedule) is False
        # A start would show at once: apply_schedule begins it before it returns, and the
        # status is answered on the same event loop, after the start task's first step.
        before = _status(stack)
        assert before["state"] == "cold" and before["cold_starts"] == starts
        assert before["warm_schedule"]["open"] is False
        assert before["warm_schedule"]["next_change"] == "2026-11-25T08:00:00+00:00"

        clock.set(dt.datetime(2026, 11, 25, 9, 0, tzinfo=PARIS))
        assert stack.call(transport.apply_schedule) is True
        _wait_for(lambda: _status(stack)["state"] == "warm", 300, "the window's start")
        # Idle for three scale-down windows (the idle watch looks four times a window), but
        # inside the warm window: still warm.
        time.sleep(3 * transport.scaledown_window)
        inside = _status(stack)
        assert inside["state"] == "warm" and inside["cold_starts"] == starts + 1
        assert inside["warm_schedule"]["open"] is True

        clock.set(dt.datetime(2026, 11, 25, 18, 0, tzinfo=PARIS))
        assert stack.call(transport.apply_schedule) is False
        _wait_for(lambda: _status(stack)["state"] == "cold", 30, "the idle tail after the window")
        after = _status(stack)
        assert after["cold_starts"] == starts + 1 and after["warm_schedule"]["open"] is False
    finally:
        transport.schedule, transport.clock, transport.scaledown_window = saved
