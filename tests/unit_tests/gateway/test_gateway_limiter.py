"""Per-key rate limits (``deploy/gateway/limiter.py``) on a controlled clock."""

from __future__ import annotations

from typing import Any

import limits.storage.memory
import limits.strategies
import pytest

import deploy.gateway.limiter
from deploy.gateway.keys import KeyRecord
from deploy.gateway.limiter import LimitExceeded, RateLimits

WINDOW_START = 1_700_000_040.0  # a multiple of 60: a minute window starts here


class FakeTime:
    """Stands in for the ``time`` module where the limiter and ``limits`` read the clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime(WINDOW_START + 1)
    for module in (limits.storage.memory, limits.strategies, deploy.gateway.limiter):
        monkeypatch.setattr(module, "time", fake)
    return fake


def key(name: str = "alice", **limits_: Any) -> KeyRecord:
    return KeyRecord(name, "0" * 64, **limits_)


def refused(rl: RateLimits, record: KeyRecord, **kw: Any) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        rl.admit(record, kw.pop("requests", 1), kw.pop("tokens", 0), **kw)
    return info.value


# -- LimitExceeded -------------------------------------------------------------------------------


def test_limit_exceeded_rounds_retry_after_up_and_at_least_one() -> None:
    assert LimitExceeded("a", "rpm", 5, 0.2).retry_after == 1
    assert LimitExceeded("a", "rpm", 5, -3).retry_after == 1
    assert LimitExceeded("a", "rpm", 5, 7.01).retry_after == 8


def test_limit_exceeded_codes_and_message() -> None:
    budget = LimitExceeded("alice", "monthly_budget_usd", 10, 3600)
    rate = LimitExceeded("alice", "tpm", 1000, 3)
    assert budget.code == "insufficient_quota"
    assert rate.code == "rate_limit_exceeded"
    assert "'alice'" in str(rate) and "tpm=1000" in str(rate) and "3 s" in str(rate)


# -- requests per minute -------------------------------------------------------------------------


def test_rpm_admits_up_to_the_limit_then_refuses(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(rpm=3)
    for _ in range(3):
        rl.admit(alice, 1, 0).settle(0)
    error = refused(rl, alice)
    assert error.limit == "rpm" and error.key == "alice" and error.allowed == 3
    assert error.retry_after >= 1 and error.code == "rate_limit_exceeded"


def test_rpm_counts_a_batch_as_several_requests(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(rpm=4)
    rl.admit(alice, 3, 0)
    assert refused(rl, alice, requests=2).limit == "rpm"
    rl.admit(alice, 1, 0)


def test_rpm_is_per_key(clock: FakeTime) -> None:
    rl = RateLimits()
    rl.admit(key("alice", rpm=1), 1, 0)
    refused(rl, key("alice", rpm=1))
    rl.admit(key("bob", rpm=1), 1, 0)


def test_rpm_frees_up_as_the_window_slides(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(rpm=2)
    rl.admit(alice, 2, 0)
    error = refused(rl, alice)
    assert error.retry_after <= 60
    clock.now = WINDOW_START + 60 + 59  # the old window now weighs 1/60 of its count
    rl.admit(alice, 1, 0)
    clock.now = WINDOW_START + 180  # two windows later: nothing left
    rl.admit(alice, 2, 0)


def test_no_limits_means_no_refusal(clock: FakeTime) -> None:
    rl, free = RateLimits(), key()
    for _ in range(1000):
        rl.admit(free, 1, 10_000, stream=True)
    assert rl.publish()["streams"] == {"alice": 1000}


# -- tokens per minute ---------------------------------------------------------------------------


def test_tpm_refuses_a_reservation_over_what_is_left(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=1000)
    ticket = rl.admit(alice, 1, 700)
    assert ticket.reserved_tokens == 700
    error = refused(rl, alice, tokens=400)
    assert error.limit == "tpm" and error.allowed == 1000 and error.retry_after >= 1
    rl.admit(alice, 1, 300)


def test_tpm_reservation_larger_than_the_limit_takes_the_limit(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=500)
    ticket = rl.admit(alice, 1, 10_000)
    assert ticket.reserved_tokens == 500
    assert refused(rl, alice, tokens=1).limit == "tpm"


def test_tpm_refusal_takes_no_request(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(rpm=2, tpm=100)
    rl.admit(alice, 1, 100)  # tpm now full, one request left
    for _ in range(5):
        assert refused(rl, alice, tokens=1).limit == "tpm"
    rl.admit(alice, 1, 0)
    assert refused(rl, alice).limit == "rpm"


def test_rpm_refusal_takes_no_tokens(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(rpm=1, tpm=1000)
    rl.admit(alice, 1, 0)
    for _ in range(5):
        assert refused(rl, alice, tokens=300).limit == "rpm"
    windows = rl.publish()["windows"]
    assert not any("tpm:alice" in k for k in windows)  # type: ignore[union-attr]


def test_zero_tpm_refuses_requests_that_need_tokens(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=0)
    error = refused(rl, alice, tokens=50)
    assert error.limit == "tpm" and error.retry_after >= 1


def test_zero_rpm_refuses_every_request(clock: FakeTime) -> None:
    assert refused(RateLimits(), key(rpm=0)).limit == "rpm"


def test_stream_refusal_takes_no_request_or_tokens(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(rpm=2, tpm=100, max_streams=1)
    rl.admit(alice, 1, 50, stream=True)
    assert refused(rl, alice, tokens=50, stream=True).limit == "max_streams"
    rl.admit(alice, 1, 50)  # the refused stream took neither a request nor tokens


def test_settle_refunds_unused_tokens_so_another_request_fits(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=1000)
    ticket = rl.admit(alice, 1, 900)
    refused(rl, alice, tokens=500)
    ticket.settle(200)
    rl.admit(alice, 1, 800)
    assert refused(rl, alice, tokens=1).limit == "tpm"


def test_settle_none_refunds_every_reserved_token(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=1000)
    rl.admit(alice, 1, 1000).settle(None)
    rl.admit(alice, 1, 1000)


def test_settle_is_idempotent(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=1000)
    other = rl.admit(alice, 1, 600)
    ticket = rl.admit(alice, 1, 400)
    for _ in range(3):
        ticket.settle(None)  # refunds its 400 once, not the other ticket's tokens
    assert not other.settled and ticket.settled
    assert refused(rl, alice, tokens=401).limit == "tpm"
    rl.admit(alice, 1, 400)


def test_usage_over_the_reservation_becomes_debt(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=1000)
    rl.admit(alice, 1, 100).settle(600)  # 500 over: paid back at 1000 a minute, in 30 s
    error = refused(rl, alice, tokens=1)
    assert error.limit == "tpm" and error.retry_after == 30
    clock.now += 30
    rl.admit(alice, 1, 400)  # the minute's window still holds the 100 reserved
    refused(rl, alice, tokens=501)


def test_settle_after_the_window_moved_refunds_the_window_it_reserved_in(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=1000)
    ticket = rl.admit(alice, 1, 1000)
    clock.now = WINDOW_START + 61  # next window: the last one still weighs ~59/60
    refused(rl, alice, tokens=100)
    ticket.settle(0)
    rl.admit(alice, 1, 1000)


# -- overdraft debt ------------------------------------------------------------------------------


def test_overdraft_is_debt_paid_back_at_the_tpm_rate(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=100)
    start = clock.now
    rl.admit(alice, 1, 10).settle(500)  # 490 over a 100-a-minute limit: 294 s to pay
    error = refused(rl, alice, tokens=1)
    assert error.limit == "tpm" and error.allowed == 100 and error.retry_after == 294
    clock.now = start + 120  # the sliding window has forgotten it; the debt has not
    assert refused(rl, alice, tokens=1).retry_after == 174
    clock.now = start + 293
    assert refused(rl, alice, tokens=1).retry_after == 1
    clock.now = start + 294
    rl.admit(alice, 1, 100)


def test_overdraft_settled_after_the_minute_it_was_admitted_in_is_paid(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=100)
    ticket = rl.admit(alice, 1, 10)
    clock.now += 90  # a cold start or a long stream: the admitting window is gone
    ticket.settle(500)
    assert refused(rl, alice, tokens=1).retry_after == 294
    clock.now += 200
    assert refused(rl, alice, tokens=1).retry_after == 94
    clock.now += 94
    rl.admit(alice, 1, 100)


def test_overdrafts_add_up(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=100)
    first, second = rl.admit(alice, 1, 10), rl.admit(alice, 1, 10)
    first.settle(500)
    clock.now += 60  # 100 of the first 490 paid
    second.settle(500)
    assert refused(rl, alice, tokens=1).retry_after == 234 + 294


def test_usage_within_the_reservation_makes_no_debt(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(tpm=100)
    rl.admit(alice, 1, 50).settle(50)
    rl.admit(alice, 1, 30).settle(None)
    rl.admit(alice, 1, 50)
    assert rl.publish()["debt"] == {}


def test_debt_refusal_takes_nothing(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(rpm=3, tpm=100, max_streams=1)
    rl.admit(alice, 1, 10).settle(500)
    clock.now += 150  # both windows have expired; 250 tokens of debt are left
    for tokens in (0, 1, 50):  # a request reserving nothing can still run up usage
        error = refused(rl, alice, tokens=tokens, stream=True)
        assert error.limit == "tpm" and error.retry_after == 144
    doc = rl.publish()
    assert doc["windows"] == {} and doc["streams"] == {}


def test_debt_is_kept_by_key(clock: FakeTime) -> None:
    rl = RateLimits()
    rl.admit(key("alice", tpm=100), 1, 10).settle(500)
    rl.admit(key("bob", tpm=100), 1, 100)
    rl.admit(key("carol"), 1, 10).settle(10_000)  # no tpm: nothing to pay
    assert list(rl.publish()["debt"]) == ["alice"]  # type: ignore[arg-type]


def test_clock_is_injectable() -> None:
    now = [1_000.0]
    rl, alice = RateLimits(clock=lambda: now[0]), key(tpm=600)
    rl.admit(alice, 1, 10).settle(110)  # 100 over at 600 a minute: 10 s
    doc = rl.publish()
    assert doc["at"] == 1_000.0 and doc["debt"] == {"alice": [100, 1_000.0]}
    assert refused(rl, alice, tokens=1).retry_after == 10
    now[0] += 10
    rl.admit(alice, 1, 10)
    assert rl.publish()["debt"] == {}


def test_published_debt_blocks_the_key_on_another_wrapper(clock: FakeTime) -> None:
    alice = key(tpm=100)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 1, 10).settle(500)
    doc = peer.publish()
    assert doc["debt"] == {"alice": [490, clock.now]}
    here.absorb([doc], stale_after=30)
    assert refused(here, alice, tokens=1).retry_after == 294
    clock.now += 150  # the windows are gone; the peer's debt is not
    here.absorb([peer.publish()], stale_after=30)
    assert refused(here, alice, tokens=1).retry_after == 144
    clock.now += 144
    here.absorb([peer.publish()], stale_after=30)
    here.admit(alice, 1, 100)
    assert peer.publish()["debt"] == {}


def test_own_and_peer_debts_add_up_and_are_paid_at_the_tpm_rate(clock: FakeTime) -> None:
    alice = key(tpm=100)
    a, b = RateLimits(), RateLimits()

    def sync() -> None:
        a_doc, b_doc = a.publish(), b.publish()
        a.absorb([b_doc], stale_after=30)
        b.absorb([a_doc], stale_after=30)

    start = clock.now
    a.admit(alice, 1, 10).settle(500)
    b.admit(alice, 1, 10).settle(500)
    sync()
    for rl in (a, b):  # 980 tokens: 588 s, not 294
        assert refused(rl, alice, tokens=1).retry_after == 588
    for step in range(1, 20):  # paid at 100 a minute in all, not 100 on each wrapper
        clock.now = start + 20 * step
        sync()
    clock.now = start + 400
    for rl in (a, b):
        assert refused(rl, alice, tokens=1).retry_after == 188
    for step in range(20, 30):
        clock.now = start + 20 * step
        sync()
    clock.now = start + 588
    sync()
    a.admit(alice, 1, 50)
    b.admit(alice, 1, 50)


def test_stale_peer_debt_is_ignored(clock: FakeTime) -> None:
    alice = key(tpm=100)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 1, 10).settle(500)
    clock.now += 150
    doc = peer.publish()
    here.absorb([doc], stale_after=30)
    assert refused(here, alice, tokens=1).limit == "tpm"
    clock.now += 31  # the peer stopped publishing: its debt counts no more
    here.absorb([doc], stale_after=30)
    here.admit(alice, 1, 100)


# -- open streams --------------------------------------------------------------------------------


def test_max_streams_slots_are_released_on_settle(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(max_streams=2)
    first, second = rl.admit(alice, 1, 0, stream=True), rl.admit(alice, 1, 0, stream=True)
    error = refused(rl, alice, stream=True)
    assert error.limit == "max_streams" and error.allowed == 2 and error.retry_after >= 1
    rl.admit(alice, 1, 0)  # a plain request needs no slot
    first.settle(10)
    first.settle(10)  # twice: one slot, not two
    rl.admit(alice, 1, 0, stream=True)
    refused(rl, alice, stream=True)
    second.settle()
    assert rl.publish()["streams"] == {"alice": 1}


def test_stream_counter_is_dropped_when_the_last_stream_ends(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(max_streams=1)
    rl.admit(alice, 1, 0, stream=True).settle()
    assert rl.publish()["streams"] == {}


def test_zero_max_streams_allows_only_plain_requests(clock: FakeTime) -> None:
    rl, alice = RateLimits(), key(max_streams=0)
    rl.admit(alice, 1, 0)
    assert refused(rl, alice, stream=True).limit == "max_streams"


# -- sharing with other wrappers -----------------------------------------------------------------


def test_publish_lists_live_windows_and_streams(clock: FakeTime) -> None:
    rl = RateLimits()
    rl.admit(key(rpm=10, tpm=1000), 2, 300, stream=True)
    doc = rl.publish()
    assert doc["at"] == clock.now
    windows: dict[str, int] = doc["windows"]  # type: ignore[assignment]
    assert sorted(windows.values()) == [2, 300]
    assert any("rpm:alice" in k for k in windows) and any("tpm:alice" in k for k in windows)
    assert doc["streams"] == {"alice": 1}


def test_publish_leaves_out_refunded_windows(clock: FakeTime) -> None:
    rl = RateLimits()
    rl.admit(key(tpm=1000), 1, 300).settle(None)
    assert rl.publish()["windows"] == {}


def test_absorbed_peer_requests_make_this_wrapper_refuse(clock: FakeTime) -> None:
    alice = key(rpm=3)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 3, 0)
    here.absorb([peer.publish()], stale_after=30)
    assert refused(here, alice).limit == "rpm"
    here.absorb([], stale_after=30)  # the peer stopped publishing
    here.admit(alice, 1, 0)


def test_absorbed_peer_tokens_and_own_add_up(clock: FakeTime) -> None:
    alice = key(tpm=1000)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 1, 600)
    here.absorb([peer.publish()], stale_after=30)
    here.admit(alice, 1, 300)
    assert refused(here, alice, tokens=101).limit == "tpm"
    here.admit(alice, 1, 100)


def test_several_peers_add_up(clock: FakeTime) -> None:
    alice = key(rpm=4)
    peers = [RateLimits() for _ in range(2)]
    for p in peers:
        p.admit(alice, 2, 0)
    here = RateLimits()
    here.absorb([p.publish() for p in peers], stale_after=30)
    assert refused(here, alice).limit == "rpm"


def test_absorbed_peer_streams_count_toward_max_streams(clock: FakeTime) -> None:
    alice = key(max_streams=2)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 1, 0, stream=True)
    here.absorb([peer.publish()], stale_after=30)
    here.admit(alice, 1, 0, stream=True)
    assert refused(here, alice, stream=True).limit == "max_streams"


def test_stale_peers_are_ignored(clock: FakeTime) -> None:
    alice = key(rpm=1, max_streams=1)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 1, 0, stream=True)
    published = peer.publish()
    clock.now += 31
    here.absorb([published], stale_after=30)
    here.admit(alice, 1, 0, stream=True)


def test_absorb_replaces_earlier_peer_counts(clock: FakeTime) -> None:
    alice = key(rpm=2)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 2, 0)
    here.absorb([peer.publish()], stale_after=30)
    refused(here, alice)
    here.absorb([{"at": clock.now, "windows": {}, "streams": {}}], stale_after=30)
    here.admit(alice, 2, 0)


def test_own_counts_exclude_absorbed_peer_counts(clock: FakeTime) -> None:
    alice = key(rpm=10)
    peer, here = RateLimits(), RateLimits()
    peer.admit(alice, 4, 0)
    here.absorb([peer.publish()], stale_after=30)
    here.admit(alice, 1, 0)
    assert list(here.publish()["windows"].values()) == [1]  # type: ignore[union-attr]
