"""The bill, shared: the GPU up-time meter (uptime.py) and its allocation (allocation.py), and
the wrapper's routes over them: every second a container was up goes to a key or to the
``(unallocated)`` line, to the cent; concurrent requests share the GPU rather than each
paying all of it; a budget counts allocated cost, the scaledown tail included."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from deploy.core.contract import ContainerLife, Facts
from deploy.gateway.allocation import UNALLOCATED, allocate, merge_lives
from deploy.gateway.store import MemoryStore
from deploy.gateway.uptime import (
    _BUSY_GAP_S,
    STALE_AFTER_S,
    LifeRecord,
    UptimeMeter,
    _add_interval,
    merge_intervals,
)
from deploy.wrapper import create_app
from tests.unit_tests.wrapper_fake import KEY, FakeTransport, client_for, make_settings

CHAT_URL = "/v1/chat/completions"
DAY = 86400.0
T0 = 1_780_000_000.0 - 1_780_000_000.0 % DAY  # a UTC midnight
ALICE, BOB = "sk-alice-" + "a" * 24, "sk-bob-" + "b" * 24


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MeteredFake(FakeTransport):
    """The fake engine, with lives it reports exactly (as LocalTransport does)."""

    def __init__(self) -> None:
        super().__init__()
        self.engine_lives: list[ContainerLife] = []

    def lives(self) -> list[ContainerLife]:
        return list(self.engine_lives)

    async def chat(self, body):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.02)  # engine time to share
        return await super().chat(body)


def record(
    container: str, up: float, ready: float, stop: float | None, work: dict,
    busy: list[list[float]], exact: bool = True, window: float = 120.0,
) -> LifeRecord:  # fmt: skip
    return LifeRecord("m", container, up, ready, max((b for _, b in busy), default=ready),
                      stop, exact, window, busy, work)  # fmt: skip


# -- the allocation adds up ------------------------------------------------------------------


def test_every_second_of_a_life_is_allocated_and_concurrency_is_shared() -> None:
    """A 100 s life: 20 s boot, alice and bob busy at once for 10 s (each 10 engine s),
    then alice alone 10 s, then idle. The two concurrent requests share the 10 s they
    overlap; the sum is the up-time, never more."""
    busy = [[T0 + 20, T0 + 30], [T0 + 20, T0 + 30], [T0 + 40, T0 + 50]]
    day = _day(T0)
    rec = record("c1", T0, T0 + 20, T0 + 100, {day: {"alice": [20.0, 2], "bob": [10.0, 1]}}, busy)
    lives = merge_lives([rec], now=T0 + 1000)
    shares = allocate(lives)
    total = sum(s.gpu_seconds for s in shares.values())
    assert total == pytest.approx(100.0)
    (alice,) = [s for (_, _, k), s in shares.items() if k == "alice"]
    (bob,) = [s for (_, _, k), s in shares.items() if k == "bob"]
    assert alice.busy_seconds + bob.busy_seconds == pytest.approx(20.0)  # union, not 30
    assert alice.busy_seconds == pytest.approx(2 * bob.busy_seconds)  # by engine seconds
    assert alice.boot_seconds + bob.boot_seconds == pytest.approx(20.0)
    assert alice.idle_seconds + bob.idle_seconds == pytest.approx(60.0)
    assert UNALLOCATED not in {k for _, _, k in shares}
    assert not alice.provisional


def test_the_overhead_policy_keeps_boot_and_idle_on_one_line() -> None:
    rec = record("c1", T0, T0 + 20, T0 + 100, {_day(T0): {"alice": [10.0, 1]}},
                 [[T0 + 20, T0 + 30]])  # fmt: skip
    shares = allocate(merge_lives([rec], now=T0 + 1000), policy="overhead")
    lines = {k: s for (_, _, k), s in shares.items()}
    assert lines["alice"].gpu_seconds == pytest.approx(10.0)
    assert lines[UNALLOCATED].boot_seconds == pytest.approx(20.0)
    assert lines[UNALLOCATED].idle_seconds == pytest.approx(70.0)


def test_a_life_nobody_used_is_unallocated_and_a_life_across_midnight_splits_by_day() -> None:
    warm = record("w", T0 - 50, T0 - 40, T0 + 50, {}, [])
    shares = allocate(merge_lives([warm], now=T0 + 1000))
    assert {(d, k): round(s.gpu_seconds, 6) for (d, _, k), s in shares.items()} == {
        (_day(T0 - DAY), UNALLOCATED): 50.0, (_day(T0), UNALLOCATED): 50.0}  # fmt: skip


lives_strategy = st.lists(
    st.tuples(
        st.floats(0, 3 * DAY), st.floats(0, 300), st.floats(1, 20_000),  # up, boot, length
        st.lists(st.tuples(st.floats(0, 1), st.floats(0, 0.3), st.sampled_from("abc")),
                 max_size=6),  # requests: (start share of the life, length share, key)
        st.booleans(),  # still up
    ),
    min_size=1, max_size=5,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(lives_strategy, st.sampled_from(["proportional", "overhead"]))
def test_per_model_and_day_keys_plus_unallocated_equal_the_up_time(specs, policy) -> None:
    """Whatever the lives, requests and policy: per day, the shares add up to the seconds
    the containers were up that day, and no share is negative."""
    now = T0 + 4 * DAY
    records, expected = [], {}
    for i, (up, boot, length, requests, running) in enumerate(specs):
        start, stop = T0 + up, T0 + up + length
        ready = start + min(boot, length)
        busy, work = [], {}
        for where, size, key in requests:
            a = ready + where * (stop - ready)
            b = min(stop, a + size * length)
            busy.append([a, b])
            day = _day(a)
            acc = work.setdefault(day, {}).setdefault(key, [0.0, 0])
            acc[0] += b - a
            acc[1] += 1
        records.append(record(f"c{i}", start, ready, None if running else stop, work, busy))
        end = now if running else stop
        t = start - start % DAY
        while t < end:
            seconds = max(0.0, min(end, t + DAY) - max(start, t))
            if seconds:
                expected[_day(t)] = expected.get(_day(t), 0.0) + seconds
            t += DAY
    shares = allocate(merge_lives(records, now), policy)
    got: dict[str, float] = {}
    for (day, _, _), share in shares.items():
        assert min(share.busy_seconds, share.boot_seconds, share.idle_seconds) >= -1e-6
        got[day] = got.get(day, 0.0) + share.gpu_seconds
    assert got.keys() == {d for d, s in expected.items() if s > 0} | (got.keys() - expected.keys())
    for day, seconds in expected.items():
        assert got.get(day, 0.0) == pytest.approx(seconds, abs=1e-6)


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d")


# -- the meter -----------------------------------------------------------------------------


def test_a_container_seen_only_in_replies_stops_a_window_after_its_last_request() -> None:
    """On Modal nobody sees a container stop: it is taken to stop ``window`` seconds after
    its last request (Modal's scaledown), provisional until then; the meter writes it once
    that moment passes, whole, as a document a rewrite cannot count twice."""
    clock, store = Clock(T0 + 100), MemoryStore()
    meter = UptimeMeter("w1", clock)
    meter.watch("m", object(), 120.0)
    facts = Facts(container="c1", booted_at=T0 + 60, up_since=T0 + 40, engine_s=2.0)
    meter.served("m", "alice", facts, engine_s=2.0)
    meter.flush(store)
    (life,) = merge_lives([LifeRecord.from_doc(d) for _, d in store.items("uptime")], clock())
    assert (life.up_since, life.ready_at, life.final, life.end) == (
        T0 + 40,
        T0 + 60,
        False,
        T0 + 100,
    )
    clock.now = T0 + 400
    meter.flush(store)  # the stop has passed: written with it
    (doc,) = [d for _, d in store.items("uptime")]
    assert doc["stopped_at"] == T0 + 220 and not doc["exact"]
    (life,) = merge_lives([LifeRecord.from_doc(doc)], clock())
    assert life.final and life.end - life.up_since == 180.0


def test_an_exact_life_left_by_a_killed_wrapper_ends_when_last_seen() -> None:
    rec = record("c1", T0, T0 + 10, None, {}, [])
    rec.seen_at = T0 + 50
    (life,) = merge_lives([rec], now=T0 + 50 + STALE_AFTER_S + 1)
    assert life.final and life.end == T0 + 50


def test_two_wrappers_views_of_one_container_merge() -> None:
    """Two wrapper containers sent requests to one GPU container: one life, their busy
    intervals' union, their work added."""
    a = record("c", T0, T0 + 10, None, {"d": {"alice": [5.0, 1]}}, [[T0 + 10, T0 + 15]],
               exact=False, window=100)  # fmt: skip
    b = record("c", T0 + 1, T0 + 10, None, {"d": {"bob": [10.0, 1]}}, [[T0 + 12, T0 + 22]],
               exact=False, window=100)  # fmt: skip
    (life,) = merge_lives([a, b], now=T0 + 1000)
    assert life.busy == [[T0 + 10, T0 + 22]] and life.requests == 2
    assert life.end == T0 + 122 and life.final


# -- the wrapper: usage, status, metrics, budgets ------------------------------------------


def _app(more: list[dict] | None = None, **overrides):
    fake = MeteredFake()
    store = MemoryStore()
    entries = [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}, *(more or [])]
    settings_ = make_settings(api_keys=SecretStr(json.dumps(entries)), **overrides)
    return create_app(fake, settings_, store=store), fake


async def test_usage_status_and_metrics_give_the_same_allocated_seconds() -> None:
    app, fake = _app()
    now = time.time()
    fake.engine_lives = [ContainerLife("c1", now - 300, now - 260, now - 10)]
    fake.facts = Facts(container="c1", booted_at=now - 260, up_since=now - 300)
    async with client_for(app) as admin:
        await app.state.gateway.start()
        for key in (ALICE, ALICE, BOB):
            r = await admin.post(CHAT_URL, json={"messages": [{"role": "user", "content": "hi"}]},
                                 headers={"authorization": f"Bearer {key}"})  # fmt: skip
            assert r.status_code == 200
        usage = (await admin.get("/v1/usage")).json()
        rows = {r["key"]: r for r in usage["data"]}
        assert set(rows) >= {"alice", "bob"}
        up = 290.0
        assert usage["totals"]["gpu_seconds"] == pytest.approx(up, rel=1e-3)
        assert rows["alice"]["gpu_seconds"] > rows["bob"]["gpu_seconds"] > 0
        for row in rows.values():
            parts = row["busy_seconds"] + row["boot_seconds"] + row["idle_seconds"]
            assert row["gpu_seconds"] == pytest.approx(parts, abs=1e-3)
            assert row["cost_usd"] == pytest.approx(row["gpu_seconds"] * 2.5 / 3600, abs=1e-7)
        gpu = (await admin.get("/v1/gpu")).json()
        model = gpu["models"][fake.model_name]
        assert model["today"]["up_s"] == pytest.approx(up, rel=1e-3)
        assert model["month"]["allocated_usd"] == pytest.approx(
            usage["totals"]["cost_usd"], abs=1e-6
        )
        assert [life["container"] for life in gpu["lives"]] == ["c1"]
        await app.state.gateway.sync()
        app.state.gateway._allocated_at = float("-inf")
        await app.state.gateway.sync()
        status = (await admin.get("/status")).json()
        assert status["gpu"][fake.model_name]["today"]["up_s"] == pytest.approx(up, rel=1e-3)
        metrics = (await admin.get("/metrics")).text
        found = re.search(
            rf'vllm_autoscale_gpu_seconds{{model="{re.escape(fake.model_name)}",part="up",'
            r'period="today"} ([0-9.e+]+)', metrics)  # fmt: skip
        assert found and float(found.group(1)) == pytest.approx(up, rel=1e-3)
        user = await admin.get("/v1/gpu", headers={"authorization": f"Bearer {ALICE}"})
        assert user.status_code == 403


async def test_a_budget_counts_the_idle_tail_a_request_causes() -> None:
    """A request of a few engine milliseconds wakes a container: its own price is far
    below the budget, but the boot and the scaledown tail it causes (120 s at $2.50/h =
    $0.083) are allocated to it and held at once: the next request is refused."""
    carol_entry = {"name": "carol", "key": KEY + "c", "monthly_budget_usd": 0.05}
    app, fake = _app([carol_entry], request_cost_estimate_usd=0.0)
    now = time.time()
    fake.engine_lives = [ContainerLife("c9", now - 5, now - 1, None)]
    fake.facts = Facts(container="c9", booted_at=now - 1, up_since=now - 5)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    carol = {"authorization": f"Bearer {KEY}c"}
    async with client_for(app) as client:
        await app.state.gateway.start()
        first = await client.post(CHAT_URL, json=body, headers=carol)
        assert first.status_code == 200
        assert first.json()["vllm_autoscale"]["cost"]["usd"] < 0.001  # its own engine time
        app.state.gateway._allocated_at = float("-inf")
        await app.state.gateway.sync()
        second = await client.post(CHAT_URL, json=body, headers=carol)
        assert second.status_code == 429, second.text
        assert second.json()["error"]["type"] == "monthly_budget_usd"


@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 50)), max_size=40))
def test_busy_intervals_added_in_any_order_are_their_union(spans) -> None:
    busy: list[list[float]] = []
    for a, length in spans:
        _add_interval(busy, a, a + length)
    assert busy == merge_intervals([[a, a + n] for a, n in spans], _BUSY_GAP_S)
