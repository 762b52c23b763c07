"""A cold start's estimate: the median of the model's last boots less what has passed, none
before a boot was seen; ``/status``'s ``boot`` and ``vllm-autoscale warmup`` show it."""

from __future__ import annotations

import time

from deploy.core.contract import EngineStatus
from deploy.ops.cli.remote import _waking
from deploy.wrapper.serving.progress import boot_report, eta, progress_event


class _Gateway:
    def __init__(self, boots: list[float]) -> None:
        self.boots = boots

    def boot_times(self, model: str) -> list[float]:
        return self.boots


def _status(state: str, since: float | None = None) -> EngineStatus:
    extra = {} if since is None else {"starting_since": since}
    return EngineStatus(state, 0, 0, 1, 120.0, extra=extra)  # type: ignore[arg-type]


def test_the_estimate_is_the_median_of_the_last_boots_less_the_elapsed() -> None:
    assert eta([], 5.0) is None
    assert eta([100.0, 40.0, 44.0, 50.0, 46.0, 60.0], 10.0) == 40.0  # last three: 50, 46, 60
    assert eta([30.0], 45.0) == 0.0  # late: never negative


def test_status_s_boot_report_while_starting_and_warm() -> None:
    gateway = _Gateway([30.0, 34.0, 32.0])
    starting = boot_report(_status("starting", time.time() - 10), gateway, "m")  # type: ignore[arg-type]
    assert starting["last_boots_s"] == [30.0, 34.0, 32.0]
    assert 9.5 <= starting["elapsed_s"] <= 11 and 21 <= starting["eta_s"] <= 22.5
    assert boot_report(_status("warm"), gateway, "m") == {"last_boots_s": [30.0, 34.0, 32.0]}  # type: ignore[arg-type]


def test_a_stream_s_progress_without_a_known_boot_start_counts_its_own_wait() -> None:
    event = progress_event(_status("starting"), _Gateway([20.0]), "m", waited=4.0)  # type: ignore[arg-type]
    assert event["elapsed_s"] == 4.0 and event["eta_s"] == 16.0 and event["state"] == "starting"


def test_warmup_shows_the_same_estimate() -> None:
    answer = {"state": "starting", "boot": {"elapsed_s": 12.0, "eta_s": 30.0}}
    assert _waking(answer, waited=3.0) == "engine starting... 12 s of about 42 s"
    assert _waking({"state": "cold"}, waited=3.0) == "engine cold... 3 s"
