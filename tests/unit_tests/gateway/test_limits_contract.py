"""What ``deploy/gateway/limiter.py`` takes from the ``limits`` library's private API.

``_SharedStorage`` extends ``limits.storage.MemoryStorage`` through two name-mangled methods:
it overrides ``__schedule_expiry`` (so ``incr``/``decr`` arm no timer thread) and calls
``__expire_events`` (the gateway's sync drops expired counters). ``limits`` offers no public
way to do either, so it is pinned below its next minor in ``deploy/pyproject.toml``; this test
is what moving the pin runs into: each check names the private attribute a release moved or
changed, before the rate-limit tests fail in ways that point nowhere (a renamed
``__schedule_expiry`` would not fail anything: the override would silently stop applying and
every hit would start a thread again).
"""

from __future__ import annotations

import threading
from collections import Counter

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from deploy.gateway.limiter import _SharedStorage

SCHEDULE = "_MemoryStorage__schedule_expiry"
EXPIRE = "_MemoryStorage__expire_events"


def _timers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]


def test_the_name_mangled_methods_are_still_there() -> None:
    for name in (SCHEDULE, EXPIRE):
        assert callable(getattr(MemoryStorage, name, None)), (
            f"limits' MemoryStorage no longer has {name!r} (the name-mangled "
            f"{name.removeprefix('_MemoryStorage')}): port _SharedStorage in gateway/limiter.py"
        )
    # The override is the one the base's code calls (name mangling inside MemoryStorage).
    assert _SharedStorage.__dict__.get(SCHEDULE) is not None


def test_incr_and_decr_still_go_through_schedule_expiry() -> None:
    calls: list[str] = []

    class Probe(MemoryStorage):
        def _MemoryStorage__schedule_expiry(self) -> None:
            calls.append("scheduled")

    storage = Probe()
    storage.incr("k", 60, 2)
    storage.decr("k", 1)
    assert calls == ["scheduled", "scheduled"], (
        f"limits' MemoryStorage.incr/decr no longer call {SCHEDULE!r}: _SharedStorage's "
        "override (no timer thread per hit) no longer applies"
    )


def test_the_shared_storage_starts_no_timer_per_hit() -> None:
    storage = _SharedStorage()
    storage.timer.join(1)  # the constructor's own one-off timer (10 ms)
    before = len(_timers())
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerMinute(1000)
    for _ in range(50):
        assert limiter.hit(item, "k")
    assert len(_timers()) <= before, f"a hit armed limits' expiry timer: {SCHEDULE!r} moved"


def test_expire_events_drops_expired_counters_and_storage_holds_the_counts() -> None:
    storage = _SharedStorage()
    assert isinstance(storage.storage, Counter), (
        "limits' MemoryStorage.storage is no longer the Counter that _SharedStorage.own reads"
    )
    storage.incr("gone", -1, 3)  # expired as soon as it is counted
    storage.incr("kept", 60, 2)
    assert "gone" in storage.storage  # nothing dropped it yet: no timer, no get
    storage.expire()  # calls _MemoryStorage__expire_events
    assert "gone" not in storage.storage, f"{EXPIRE!r} no longer drops expired counters"
    assert storage.own() == {"kept": 2}
