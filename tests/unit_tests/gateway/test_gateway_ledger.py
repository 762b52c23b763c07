"""The usage ledger (``deploy/gateway/ledger.py``) and the state stores (``store.py``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from deploy.gateway.ledger import COUNTERS, Ledger, UsageRow, seconds_to_next_month, total
from deploy.gateway.store import (
    TABLES,
    MemoryStore,
    ModalDictStore,
    SQLiteStore,
    StateStore,
    open_store,
)

Doc = dict[str, Any]


def ts(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeModalDict:
    """Only what a ``modal.Dict`` is used for; values are copied, as Modal serializes them."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self._data[key]) if key in self._data else default

    def update(self, mapping: Mapping[str, Any]) -> None:
        self._data.update({k: json.dumps(v) for k, v in mapping.items()})

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter([(k, json.loads(v)) for k, v in self._data.items()])

    def pop(self, key: str, default: Any = None) -> Any:
        return json.loads(self._data.pop(key)) if key in self._data else default


class FlakyStore:
    """A store that records writes and fails the next ``fail`` of them."""

    def __init__(self, inner: StateStore | None = None) -> None:
        self.inner = inner or MemoryStore()
        self.writes: list[tuple[str, dict[str, Doc]]] = []
        self.fail_on: set[int] = set()  # indexes of put_many calls that raise
        self.calls = 0

    def put_many(self, table: str, docs: Mapping[str, Doc]) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ConnectionError("store unreachable")
        self.writes.append((table, dict(docs)))
        self.inner.put_many(table, docs)

    def get(self, table: str, key: str) -> Doc | None:
        return self.inner.get(table, key)

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, Doc]]:
        return self.inner.items(table, prefix)

    def delete(self, table: str, key: str) -> bool:
        return self.inner.delete(table, key)

    def close(self) -> None:
        self.inner.close()


STORES: dict[str, Callable[[Path], StateStore]] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": lambda tmp: SQLiteStore(tmp / "state.sqlite3"),
    "modal-dict": lambda _: ModalDictStore("t", {t: {} for t in TABLES}),
    "modal-dict-fake": lambda _: ModalDictStore("t", {t: FakeModalDict() for t in TABLES}),
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    made = STORES[request.param](tmp_path)
    yield made
    made.close()


USAGE = {"prompt_tokens": 100, "completion_tokens": 20}
JAN = ts(2025, 1, 15)


# -- stores --------------------------------------------------------------------------------------


def test_store_put_get_and_replace_whole_documents(store: StateStore) -> None:
    store.put_many("keys", {"a": {"x": 1, "y": 2}, "b": {"x": 3}})
    store.put_many("keys", {"a": {"x": 5}})
    assert store.get("keys", "a") == {"x": 5}
    assert store.get("keys", "b") == {"x": 3}
    assert store.get("keys", "missing") is None
    assert store.get("ledger", "a") is None  # tables are apart


def test_store_items_by_prefix(store: StateStore) -> None:
    store.put_many("spend", {"2025-01|w1": {"n": 1}, "2025-01|w2": {"n": 2}, "2025-02|w1": {}})
    store.put_many("spend", {"2025_01|w3": {"n": 3}, "2025-0": {"n": 4}})
    january = dict(store.items("spend", "2025-01|"))
    assert january == {"2025-01|w1": {"n": 1}, "2025-01|w2": {"n": 2}}
    assert len(dict(store.items("spend"))) == 5
    assert dict(store.items("spend", "2025-01%")) == {}


def test_store_prefix_matches_keys_with_any_following_characters(store: StateStore) -> None:
    names = ["w|~", "w|zoë", "w|\U0001f600", "w|"]
    store.put_many("limits", {n: {"n": i} for i, n in enumerate(names)})
    store.put_many("limits", {"x|a": {}, "v|\U0001f600": {}})
    assert sorted(k for k, _ in store.items("limits", "w|")) == sorted(names)
    assert len(list(store.items("limits"))) == len(names) + 2


def test_store_delete_reports_whether_it_removed(store: StateStore) -> None:
    store.put_many("limits", {"w1": {"at": 1.0}})
    assert store.delete("limits", "w1") is True
    assert store.delete("limits", "w1") is False
    assert store.get("limits", "w1") is None
    assert list(store.items("limits")) == []


def test_store_put_nothing_is_fine(store: StateStore) -> None:
    store.put_many("ledger", {})
    assert list(store.items("ledger")) == []


def test_store_keeps_unicode_and_nested_documents(store: StateStore) -> None:
    doc = {"name": "zoë", "nested": {"list": [1, 2.5, None, True]}}
    store.put_many("keys", {"zoë@example.com": doc})
    assert store.get("keys", "zoë@example.com") == doc


def test_modal_dict_store_ignores_values_that_are_not_documents() -> None:
    dicts: dict[str, Any] = {t: {} for t in TABLES}
    dicts["keys"]["odd"] = "not a dict"
    assert ModalDictStore("t", dicts).get("keys", "odd") is None


def test_modal_dict_store_writes_into_the_given_dicts() -> None:
    dicts: dict[str, Any] = {t: {} for t in TABLES}
    ModalDictStore("t", dicts).put_many("ledger", {"row": {"requests": 1}})
    assert dicts["ledger"] == {"row": {"requests": 1}}
    assert ModalDictStore("t", dicts).get("ledger", "row") == {"requests": 1}


def test_sqlite_store_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.sqlite3"
    first = SQLiteStore(path)
    first.put_many("keys", {"alice": {"role": "admin"}})
    first.close()
    again = SQLiteStore(path)
    assert again.get("keys", "alice") == {"role": "admin"}
    again.close()


def test_sqlite_store_two_handles_on_one_file_see_each_other(tmp_path: Path) -> None:
    a, b = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    a.put_many("limits", {"wa": {"n": 1}})
    b.put_many("limits", {"wb": {"n": 2}})
    assert dict(a.items("limits")) == dict(b.items("limits")) == {"wa": {"n": 1}, "wb": {"n": 2}}
    assert b.delete("limits", "wa") and a.get("limits", "wa") is None
    a.close()
    b.close()


def test_sqlite_store_works_from_another_thread(tmp_path: Path) -> None:
    sqlite_store = SQLiteStore(tmp_path / "s.db")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            sqlite_store.put_many("ledger", {"from-thread": {"n": 1}})
            sqlite_store.close()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert errors == []
    assert sqlite_store.get("ledger", "from-thread") == {"n": 1}
    sqlite_store.close()


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    path = tmp_path / "a" / "state.sqlite3"
    opened = open_store(f"sqlite://{path}")
    assert isinstance(opened, SQLiteStore) and opened.path == path and path.exists()
    opened.close()
    monkeypatch.setenv("HOME", str(tmp_path))
    home = open_store("sqlite:///~/b/state.sqlite3")
    assert isinstance(home, SQLiteStore) and home.path == tmp_path / "b" / "state.sqlite3"
    home.close()


@pytest.mark.parametrize("url", ["redis://localhost", "modal-dict://", "", "state.sqlite3"])
def test_open_store_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError, match="VLLM_STATE_URL"):
        open_store(url)


# -- recording -----------------------------------------------------------------------------------


def test_record_adds_up_per_day_key_and_model() -> None:
    ledger = Ledger(MemoryStore(), "w1", Clock(JAN))
    ledger.record("alice", "m", USAGE, gpu_seconds=1.5, cost_usd=0.01)
    ledger.record("alice", "m", USAGE, gpu_seconds=0.5, cold_start=True, cost_usd=0.02)
    ledger.record("alice", "other", USAGE)
    ledger.record("bob", "m", None)
    ledger.flush()
    rows = {(r.key, r.model): r for r in ledger.query()}
    assert set(rows) == {("alice", "m"), ("alice", "other"), ("bob", "m")}
    row = rows[("alice", "m")]
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 200, 40)
    assert row.gpu_seconds == pytest.approx(2.0) and row.cost_usd == pytest.approx(0.03)
    assert row.cold_starts == 1 and row.date == "2025-01-15"
    assert rows[("bob", "m")].requests == 1 and rows[("bob", "m")].prompt_tokens == 0


def test_cache_hits_count_apart_from_served_requests() -> None:
    ledger = Ledger(MemoryStore(), "w1", Clock(JAN))
    ledger.record("alice", "m", USAGE, cost_usd=0.5)
    ledger.record("alice", "m", USAGE, cache_hit=True, cost_usd=9.0, gpu_seconds=9.0)
    ledger.flush()
    (row,) = ledger.query()
    assert (row.requests, row.cache_hits) == (1, 1)
    assert row.cached_tokens == 120 and row.prompt_tokens == 100
    assert row.cost_usd == pytest.approx(0.5) and row.gpu_seconds == 0
    assert ledger.month_spend("alice") == pytest.approx(0.5)


def test_a_batch_counts_its_requests() -> None:
    ledger = Ledger(MemoryStore(), "w1", Clock(JAN))
    ledger.record("alice", "m", USAGE, requests=4)
    ledger.flush()
    assert ledger.query()[0].requests == 4


def test_day_boundary_starts_a_new_row() -> None:
    clock = Clock(ts(2025, 1, 15, 23, 59, 59))
    ledger = Ledger(MemoryStore(), "w1", clock)
    ledger.record("alice", "m", USAGE)
    clock.now += 1
    ledger.record("alice", "m", USAGE)
    ledger.flush()
    assert [(r.date, r.requests) for r in ledger.query()] == [("2025-01-15", 1), ("2025-01-16", 1)]


# -- flushing ------------------------------------------------------------------------------------


def test_flush_writes_only_changed_rows() -> None:
    flaky = FlakyStore()
    ledger = Ledger(flaky, "w1", Clock(JAN))
    ledger.record("alice", "m", USAGE)
    ledger.record("bob", "m", USAGE)
    ledger.flush()
    ledger.record("bob", "m", USAGE)
    flaky.writes.clear()
    ledger.flush()
    (ledger_docs,) = [docs for table, docs in flaky.writes if table == "ledger"]
    assert [d["key"] for d in ledger_docs.values()] == ["bob"]
    assert next(iter(ledger_docs.values()))["requests"] == 2
    flaky.writes.clear()
    ledger.flush()
    assert flaky.writes == []


def test_flushed_rows_name_their_writer_and_round_floats() -> None:
    store = MemoryStore()
    ledger = Ledger(store, "w1", Clock(JAN))
    ledger.record("alice", "m", USAGE, gpu_seconds=1 / 3, cost_usd=1 / 7)
    ledger.flush()
    ((name, doc),) = store.items("ledger")
    assert name.endswith("|w1") and doc["writer"] == "w1"
    assert doc["gpu_seconds"] == pytest.approx(1 / 3, abs=1e-4)
    assert doc["cost_usd"] == pytest.approx(1 / 7, abs=1e-8)


def test_flush_failure_keeps_rows_dirty_so_nothing_is_lost() -> None:
    flaky = FlakyStore()
    flaky.fail_on = {1}
    ledger = Ledger(flaky, "w1", Clock(JAN))
    ledger.record("alice", "m", USAGE, cost_usd=0.1)
    with pytest.raises(ConnectionError):
        ledger.flush()
    assert list(flaky.inner.items("ledger")) == []
    ledger.record("bob", "m", USAGE)  # recorded while the store was down
    ledger.flush()
    assert {r.key: r.requests for r in ledger.query()} == {"alice": 1, "bob": 1}


def test_flush_failure_writing_spend_rewrites_the_rows_next_time() -> None:
    flaky = FlakyStore()
    flaky.fail_on = {2}  # the ledger rows land, the spend summary does not
    ledger = Ledger(flaky, "w1", Clock(JAN))
    ledger.record("alice", "m", USAGE, cost_usd=0.25)
    with pytest.raises(ConnectionError):
        ledger.flush()
    ledger.flush()
    peer = Ledger(flaky.inner, "w2", Clock(JAN))
    peer.refresh()
    assert peer.month_spend("alice") == pytest.approx(0.25)


# -- month spend and budgets ---------------------------------------------------------------------


def test_month_spend_adds_up_this_writers_rows_of_this_month() -> None:
    clock = Clock(ts(2025, 1, 31, 23, 0))
    ledger = Ledger(MemoryStore(), "w1", clock)
    ledger.record("alice", "m", USAGE, cost_usd=1.0)
    ledger.record("alice", "m2", USAGE, cost_usd=0.5)
    ledger.record("bob", "m", USAGE, cost_usd=7.0)
    assert ledger.month_spend("alice") == pytest.approx(1.5)  # before any flush
    assert ledger.month_spend("nobody") == 0
    clock.now = ts(2025, 2, 1, 0, 0, 1)
    assert ledger.month_spend("alice") == 0
    ledger.record("alice", "m", USAGE, cost_usd=0.25)
    assert ledger.month_spend("alice") == pytest.approx(0.25)


def test_month_spend_across_writers() -> None:
    shared = MemoryStore()
    a, b = Ledger(shared, "wa", Clock(JAN)), Ledger(shared, "wb", Clock(JAN))
    a.record("alice", "m", USAGE, cost_usd=2.0)
    b.record("alice", "m", USAGE, cost_usd=1.0)
    a.flush()
    b.flush()
    a.refresh()
    b.refresh()
    assert a.month_spend("alice") == pytest.approx(3.0)
    assert b.month_spend("alice") == pytest.approx(3.0)  # its own rows are not counted twice
    a.record("alice", "m", USAGE, cost_usd=0.5)
    assert a.month_spend("alice") == pytest.approx(3.5)
    assert b.month_spend("alice") == pytest.approx(3.0)  # until a flushes and b refreshes
    a.flush()
    b.refresh()
    assert b.month_spend("alice") == pytest.approx(3.5)


def test_a_restarted_wrapper_counts_its_old_spend_as_a_peer() -> None:
    shared = MemoryStore()
    old = Ledger(shared, "host-1-aaaa", Clock(JAN))
    old.record("alice", "m", USAGE, cost_usd=4.0)
    old.flush()
    new = Ledger(shared, "host-1-bbbb", Clock(JAN))
    new.refresh()
    assert new.month_spend("alice") == pytest.approx(4.0)


def test_peer_spend_of_last_month_no_longer_counts() -> None:
    shared = MemoryStore()
    clock = Clock(ts(2025, 1, 31, 23, 59))
    a, b = Ledger(shared, "wa", clock), Ledger(shared, "wb", clock)
    a.record("alice", "m", USAGE, cost_usd=5.0)
    a.flush()
    b.refresh()
    assert b.month_spend("alice") == pytest.approx(5.0)
    clock.now = ts(2025, 2, 1, 0, 1)
    assert b.month_spend("alice") == 0  # even before the next refresh
    b.refresh()
    assert b.month_spend("alice") == 0


def test_spend_of_a_key_named_like_a_summary_field_counts() -> None:
    shared = MemoryStore()
    a, b = Ledger(shared, "wa", Clock(JAN)), Ledger(shared, "wb", Clock(JAN))
    a.record("at", "m", USAGE, cost_usd=2.0)
    a.flush()
    b.refresh()
    assert b.month_spend("at") == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("now", "next_month"),
    [
        (ts(2025, 1, 15, 12), datetime(2025, 2, 1, tzinfo=timezone.utc)),
        (ts(2024, 2, 29, 23, 59, 59), datetime(2024, 3, 1, tzinfo=timezone.utc)),
        (ts(2025, 12, 31, 0, 0), datetime(2026, 1, 1, tzinfo=timezone.utc)),
        (ts(2025, 4, 1, 0, 0), datetime(2025, 5, 1, tzinfo=timezone.utc)),
    ],
)
def test_seconds_to_next_month(now: float, next_month: datetime) -> None:
    assert seconds_to_next_month(now) == pytest.approx(next_month.timestamp() - now)


# -- queries -------------------------------------------------------------------------------------


def filled(store: StateStore) -> Ledger:
    clock = Clock(ts(2025, 1, 30))
    a, b = Ledger(store, "wa", clock), Ledger(store, "wb", clock)
    for day in (ts(2025, 1, 30), ts(2025, 1, 31), ts(2025, 2, 1), ts(2025, 2, 2)):
        clock.now = day
        a.record("alice", "m", USAGE, cost_usd=1.0)
        b.record("alice", "m", USAGE, cost_usd=1.0)
        a.record("bob", "m", USAGE, cost_usd=10.0)
    a.flush()
    b.flush()
    return a


def test_query_adds_up_writers_per_day_key_and_model(store: StateStore) -> None:
    rows = filled(store).query(key="alice")
    assert [r.date for r in rows] == ["2025-01-30", "2025-01-31", "2025-02-01", "2025-02-02"]
    assert all(r.requests == 2 and r.cost_usd == pytest.approx(2.0) for r in rows)
    assert all(r.key == "alice" for r in rows)


def test_query_filters_by_inclusive_dates(store: StateStore) -> None:
    ledger = filled(store)
    across = ledger.query(start="2025-01-31", end="2025-02-01")
    assert sorted({r.date for r in across}) == ["2025-01-31", "2025-02-01"]
    within = ledger.query(start="2025-02-01", end="2025-02-01")
    assert {(r.date, r.key) for r in within} == {("2025-02-01", "alice"), ("2025-02-01", "bob")}
    assert {r.date for r in ledger.query(start="2025-02-02")} == {"2025-02-02"}
    assert {r.date for r in ledger.query(end="2025-01-30")} == {"2025-01-30"}
    assert ledger.query(start="2025-03-01") == []


def test_query_by_key_and_dates_together(store: StateStore) -> None:
    rows = filled(store).query(key="bob", start="2025-01-01", end="2025-01-31")
    assert [(r.date, r.requests) for r in rows] == [("2025-01-30", 1), ("2025-01-31", 1)]
    assert filled(store).query(key="nobody") == []


def test_query_is_sorted_and_total_adds_everything(store: StateStore) -> None:
    rows = filled(store).query()
    assert rows == sorted(rows, key=lambda r: (r.date, r.key, r.model))
    totals = total(rows)
    assert set(totals) == {*COUNTERS, "provisional"}
    assert totals["requests"] == sum(r.requests for r in rows) == 12
    assert totals["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
    assert totals["prompt_tokens"] == 12 * USAGE["prompt_tokens"]


def test_total_of_no_rows_is_zeros() -> None:
    assert set(total([]).values()) == {0}


def test_usage_row_add_treats_missing_and_none_as_zero() -> None:
    row = UsageRow("2025-01-01", "alice", "m", requests=2)
    row.add({"requests": None, "prompt_tokens": 5, "writer": "w1", "date": "x"})
    assert (row.requests, row.prompt_tokens, row.date) == (2, 5, "2025-01-01")


def test_ledger_over_sqlite_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SQLiteStore(path)
    before = Ledger(first, "wa", Clock(JAN))
    before.record("alice", "m", USAGE, cost_usd=1.0)
    before.flush()
    first.close()
    reopened = SQLiteStore(path)
    after = Ledger(reopened, "wb", Clock(JAN))
    after.refresh()
    assert after.month_spend("alice") == pytest.approx(1.0)
    assert [r.requests for r in after.query()] == [1]
    reopened.close()


def test_two_writers_sharing_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store_a, store_b = SQLiteStore(path), SQLiteStore(path)
    a, b = Ledger(store_a, "wa", Clock(JAN)), Ledger(store_b, "wb", Clock(JAN))
    a.record("alice", "m", USAGE, cost_usd=1.0)
    b.record("alice", "m", USAGE, cost_usd=2.0)
    a.flush()
    b.flush()
    a.refresh()
    assert a.month_spend("alice") == pytest.approx(3.0)
    for ledger in (a, b):
        (row,) = ledger.query()
        assert row.requests == 2 and row.cost_usd == pytest.approx(3.0)
    store_a.close()
    store_b.close()


def test_ledger_over_a_modal_dict_stand_in() -> None:
    dicts = {t: FakeModalDict() for t in TABLES}
    a = Ledger(ModalDictStore("gw", dicts), "wa", Clock(JAN))
    b = Ledger(ModalDictStore("gw", dicts), "wb", Clock(JAN))
    a.record("alice", "m", USAGE, cost_usd=1.0)
    b.record("alice", "m", USAGE, cost_usd=1.0)
    a.flush()
    b.flush()
    b.refresh()
    assert b.month_spend("alice") == pytest.approx(2.0)
    (row,) = b.query(key="alice", start="2025-01-15", end="2025-01-15")
    assert row.requests == 2
