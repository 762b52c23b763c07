"""Warm schedules: windows in which one GPU container is kept warm, scale to zero outside.

``VLLM_WARM_SCHEDULE`` holds windows separated by ``;``, each a cron expression for the
window's start, its length and, optionally, a time zone (default UTC):

    0 9 * * mon-fri 9h Europe/Paris          weekdays 09:00-18:00, Paris time
    0 9 * * mon-fri 9h Europe/Paris; 0 10 * * sat 3h30m Europe/Paris

The cron fields are croniter's (minute hour day-of-month month day-of-week, names allowed);
lengths are ``90m``, ``9h``, ``1h30m``, ``2d``. Daylight saving time is the zone's: a window
starting at 09:00 Paris time starts at 09:00 in summer and in winter.

The same ``WarmSchedule`` drives Modal (a scheduled function sets the GPU class's
``min_containers``), the local transport (the engine is started at a window's start and not
scaled down inside one), ``/status`` and the cost model.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

__all__ = ["WarmSchedule", "Window"]

log = logging.getLogger("vllm_autoscale.warm_schedule")
_LENGTH = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
_HORIZON = timedelta(days=10 * 366)
"""A window must open within this (29 February: at most 8 years apart)."""


def _length(text: str) -> timedelta:
    match = _LENGTH.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a window length: use e.g. 90m, 9h, 1h30m, 2d")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


@dataclass(frozen=True)
class Window:
    cron: str
    length: timedelta
    zone: str = "UTC"

    @classmethod
    def parse(cls, text: str) -> Window:
        parts = text.split()
        if len(parts) not in (6, 7):
            raise ValueError(
                f"{text!r}: a window is 'MIN HOUR DOM MON DOW LENGTH [ZONE]', "
                "e.g. '0 9 * * mon-fri 9h Europe/Paris'"
            )
        cron, length = " ".join(parts[:5]), _length(parts[5])
        zone = parts[6] if len(parts) == 7 else "UTC"
        if not croniter.is_valid(cron):
            raise ValueError(f"{cron!r} is not a cron expression (MIN HOUR DOM MON DOW)")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone!r} is not a time zone (e.g. Europe/Paris, UTC)") from None
        if not timedelta(minutes=1) <= length <= timedelta(days=7):
            raise ValueError(f"window length {parts[5]!r} must be between 1 minute and 7 days")
        window = cls(cron, length, zone)
        window._check_opens(text, time.time())
        return window

    def _check_opens(self, text: str, ts: float) -> None:
        """A cron of a date that does not exist (30 February, 31 April) is valid to croniter
        but never fires: refused here, not found out by the first ``/status``."""
        never = f"window {text!r} never opens: {self.cron!r} matches no date (e.g. 30 February)"
        try:
            after, before = self.next_start(ts), self.last_start(ts)
        except (CroniterError, OverflowError):
            raise ValueError(never) from None
        horizon = _HORIZON.total_seconds()
        if after - ts > horizon or ts - before > horizon:
            raise ValueError(never)

    def _local(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz=ZoneInfo(self.zone))

    def last_start(self, ts: float) -> float:
        """The latest start at or before ``ts``."""
        at = self._local(ts) + timedelta(microseconds=1)  # a start exactly at ts counts
        return croniter(self.cron, at).get_prev(datetime).timestamp()

    def next_start(self, ts: float) -> float:
        return croniter(self.cron, self._local(ts)).get_next(datetime).timestamp()

    def open_until(self, ts: float) -> float | None:
        """When the window holding ``ts`` closes, or None when ``ts`` is outside it."""
        end = self.last_start(ts) + self.length.total_seconds()
        return end if ts < end else None

    def __str__(self) -> str:
        total = int(self.length.total_seconds() // 60)
        hours, minutes = divmod(total, 60)
        text = f"{hours}h" * bool(hours) + f"{minutes}m" * bool(minutes)
        return f"{self.cron} {text} {self.zone}"


class WarmSchedule:
    """Windows (possibly overlapping) in which the GPU stays warm."""

    def __init__(self, windows: list[Window]) -> None:
        self.windows = windows
        self._broken: set[Window] = set()
        """Windows that failed at run time (reported once each)."""

    @classmethod
    def parse(cls, text: str | None) -> WarmSchedule:
        entries = [e.strip() for e in (text or "").split(";") if e.strip()]
        return cls([Window.parse(e) for e in entries])

    def __bool__(self) -> bool:
        return bool(self.windows)

    def _failed(self, window: Window, exc: Exception) -> None:
        if window not in self._broken:
            self._broken.add(window)
            log.error("warm window %r never opens (%s): read as closed", str(window), exc)

    def _open_until(self, window: Window, ts: float) -> float | None:
        """``window.open_until``; a window croniter cannot place (a parser check bypassed)
        reads as closed: ``/status``, ``/health`` and the schedule loop keep answering."""
        try:
            return window.open_until(ts)
        except (CroniterError, OverflowError) as exc:
            self._failed(window, exc)
            return None

    def _next_start(self, window: Window, ts: float) -> float | None:
        try:
            return window.next_start(ts)
        except (CroniterError, OverflowError) as exc:
            self._failed(window, exc)
            return None

    def is_open(self, ts: float) -> bool:
        return any(self._open_until(w, ts) is not None for w in self.windows)

    def next_change(self, ts: float) -> float | None:
        """When ``is_open`` next flips (overlapping and back-to-back windows merged)."""
        if not self.windows:
            return None
        at = ts
        for _ in range(1000):  # merged windows: bounded, a week of back-to-back minutes
            ends = [e for w in self.windows if (e := self._open_until(w, at)) is not None]
            if ends:
                at = max(ends)  # still open until the last of the open windows closes
                if not self.is_open(at):
                    return at
            else:
                starts = [s for w in self.windows if (s := self._next_start(w, at)) is not None]
                return min(starts) if starts else None
        return at

    def open_seconds(self, start: float, end: float) -> float:
        """Seconds inside a window between ``start`` and ``end`` (the cost model's warm time)."""
        total, at = 0.0, start
        while at < end:
            change = self.next_change(at)
            if change is None:
                break
            change = min(change, end)
            if self.is_open(at):
                total += change - at
            at = change if change > at else at + 60
        return total

    def open_spans(self, start: float, end: float) -> list[tuple[float, float]]:
        """The open stretches between ``start`` and ``end``, clipped, overlapping and
        back-to-back windows merged: what ``open_seconds`` adds up, found window by window
        (the advisor replays a month against many schedules; ``next_change`` asks every
        window at every change)."""
        spans: list[tuple[float, float]] = []
        for window in self.windows:
            length = window.length.total_seconds()
            try:
                at = window.last_start(start)
                while at < end:
                    if at + length > start:
                        spans.append((max(at, start), min(at + length, end)))
                    at = window.next_start(at)
            except (CroniterError, OverflowError) as exc:
                self._failed(window, exc)
        merged: list[tuple[float, float]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def min_containers(self, ts: float, base: int = 0, lead: float = 0.0) -> int:
        """GPU containers to keep warm at ``ts``: one inside a window, and ``lead`` seconds
        before one opens (a boot's worth, so the GPU is warm when the window starts)."""
        if self.is_open(ts) or (lead > 0 and self.is_open(ts + lead)):
            return max(base, 1)
        return base

    def describe(self, ts: float) -> dict[str, object]:
        """What ``/status`` shows."""
        change = self.next_change(ts)
        return {
            "windows": [str(w) for w in self.windows],
            "open": self.is_open(ts),
            "next_change": (
                datetime.fromtimestamp(change, tz=timezone.utc).isoformat() if change else None
            ),
        }
