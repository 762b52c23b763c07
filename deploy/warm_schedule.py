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

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

__all__ = ["WarmSchedule", "Window"]

_LENGTH = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


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
        return cls(cron, length, zone)

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

    @classmethod
    def parse(cls, text: str | None) -> WarmSchedule:
        entries = [e.strip() for e in (text or "").split(";") if e.strip()]
        return cls([Window.parse(e) for e in entries])

    def __bool__(self) -> bool:
        return bool(self.windows)

    def is_open(self, ts: float) -> bool:
        return any(w.open_until(ts) is not None for w in self.windows)

    def next_change(self, ts: float) -> float | None:
        """When ``is_open`` next flips (overlapping and back-to-back windows merged)."""
        if not self.windows:
            return None
        at = ts
        for _ in range(1000):  # merged windows: bounded, a week of back-to-back minutes
            ends = [e for w in self.windows if (e := w.open_until(at)) is not None]
            if ends:
                at = max(ends)  # still open until the last of the open windows closes
                if not self.is_open(at):
                    return at
            else:
                return min(w.next_start(at) for w in self.windows)
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
