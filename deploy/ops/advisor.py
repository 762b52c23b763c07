"""The window advisor: which ``scaledown_window`` (or warm schedule) is cheapest for a traffic
trace, and how often its users wait for a boot.

The replay itself is pure and lives in ``deploy/core/advisor.py`` (the wrapper's
``GET /v1/gpu/advice`` runs it over the traffic it recorded); its model is described there.
This module adds the operator's defaults, the ``cost`` command's preset for the prices, and
``search``: the sweep with warm schedules derived from the traffic itself
(``deploy/core/warm_candidates.py``) besides those given, and the recommendation.

The traffic it replays, traces read from a file and synthetic profiles, is traffic.py's; its
names (``Trace``, ``load_traffic``, ``profile``, ...) are importable from here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..core.advisor import (
    DEFAULT_MAX_WAIT_SHARE,
    DEFAULT_WINDOWS,
    CostInputs,
    Recommendation,
    Row,
    Trace,
    recommend,
    simulate,
    simulate_always_on,
)
from ..core.advisor import _p95 as _p95  # its tests read it here
from ..core.advisor import sweep as _sweep
from ..core.schedule import WarmSchedule
from ..core.warm_candidates import Candidate, derive_schedules
from .cost import PRESETS, inputs_from_preset
from .traffic import INFERENCE_PATHS, PROFILES, load_traffic, office_hours_schedule, profile

__all__ = [
    "DEFAULT_MAX_WAIT_SHARE",
    "DEFAULT_WINDOWS",
    "INFERENCE_PATHS",
    "PROFILES",
    "Candidate",
    "Recommendation",
    "Row",
    "Search",
    "Trace",
    "load_traffic",
    "office_hours_schedule",
    "profile",
    "recommend",
    "search",
    "simulate",
    "simulate_always_on",
    "sweep",
]

DEFAULT_PRESET = "modal-a100-80gb"  # the `cost` command's default
SEED_WINDOW = float(PRESETS["seed"]["scaledown_window"])


def sweep(
    trace: Trace | Iterable[float],
    inputs: CostInputs | None = None,
    windows: Iterable[float] = DEFAULT_WINDOWS,
    schedules: Iterable[WarmSchedule | str] = (),
    always_on: bool = True,
    service_seconds: float = 0.0,
) -> list[Row]:
    """Every window, then every schedule with every window outside it, then always on.
    ``inputs`` gives the prices and the boot (default: the ``cost`` command's preset)."""
    inputs = inputs or inputs_from_preset(DEFAULT_PRESET)
    return _sweep(trace, inputs, windows, schedules, always_on, service_seconds)


@dataclass(frozen=True)
class Search:
    """What the advisor tried on a trace, and what it recommends."""

    zone: str
    """The time zone the traffic's hours were read in."""
    candidates: list[Candidate]
    """The schedules derived from the traffic."""
    given: list[str]
    """The schedules given to try as well, as the rows spell them."""
    schedules: list[str]
    """Every schedule replayed: the derived ones, then those given that differ."""
    rows: list[Row]
    best: Recommendation


def _canonical(schedule: WarmSchedule | str) -> str:
    parsed = WarmSchedule.parse(schedule) if isinstance(schedule, str) else schedule
    return "; ".join(str(w) for w in parsed.windows)


def search(
    trace: Trace,
    inputs: CostInputs | None = None,
    *,
    zone: str = "UTC",
    schedules: Iterable[WarmSchedule | str] = (),
    windows: Iterable[float] = DEFAULT_WINDOWS,
    derive: bool = True,
    max_wait_share: float | None = None,
    max_mean_wait: float | None = None,
) -> Search:
    """Every window, alone and with each schedule derived from ``trace``'s busy hours in
    ``zone`` and each of ``schedules``, and always on; the cheapest within the wait budget
    recommended (``recommend``)."""
    inputs = inputs or inputs_from_preset(DEFAULT_PRESET)
    candidates = derive_schedules(trace, zone) if derive else []
    given = [_canonical(s) for s in schedules]
    tried = [t for t in dict.fromkeys([*(c.schedule for c in candidates), *given]) if t]
    rows = _sweep(trace, inputs, windows, tried)
    best = recommend(rows, max_wait_share, max_mean_wait)
    return Search(zone, candidates, given, tried, rows, best)
