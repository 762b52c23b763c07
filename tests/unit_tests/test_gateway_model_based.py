"""The gateway as a state machine (hypothesis.stateful): two wrapper apps (two containers) on
one state store that fails and recovers, restarted at random, with keys created and revoked,
plain requests and streams (run to their end or dropped by the client) from those keys.

A model follows what each wrapper must know (which keys, whether the store was sealed,
whether it ever read the store) and predicts every answer's status; every token the fake
engine hands over and every cost the gateway books is counted per request. Invariants:

1. once a key exists, no call without a key (or with a made-up one) succeeds: 401, or 503
   while the wrapper cannot read the store; on every wrapper, a restarted one before any
   sync included, but one still open from before the key was made elsewhere (it closes at
   its next sync: the documented window, docs/gateway.md);
2. the store's ledger, once every wrapper has synced and the spill files are written back,
   books exactly the tokens (and requests, and costs) the engine produced for admitted
   requests, and nothing for refused ones (a refused request never reaches the engine);
3. a budgeted key's booked spend never exceeds its budget plus its largest single request
   (its requests all go to one wrapper, restarted or not: across wrappers a budget holds
   only to within a sync interval);
4. a revoked key is refused (401) on every wrapper once the store is back and each wrapper
   has synced.

``test_a_wrapper_restarted_while_the_store_takes_no_writes_knows_the_spend`` replays the
shortest run the machine found against invariant 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from deploy.core.contract import Reply
from deploy.gateway.gateway import Gateway
from deploy.gateway.spill import Spill
from deploy.wrapper import create_app
from tests.unit_tests.gateway.test_gateway_trust import FlakyStore
from tests.unit_tests.wrapper_fake import (
    BASE_URL,
    FakeTransport,
    chunk,
    completion,
    drop_stream,
    make_settings,
    sse_data,
    sse_events,
    usage_chunk,
)

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
ENGINE_S = 0.001
"""Seconds the fake engine takes per request: with the price below, a cost well above the
ledger's rounding (8 digits of a dollar)."""
PAUSE_TURNS = 3
"""Event-loop turns the fake engine waits between stream chunks."""
PRICE_PER_HOUR = 3600.0  # a dollar a GPU second: a request costs a few thousandths
MAX_RESTARTS = 3
"""Per run: each builds an app (tens of ms); three cover restarts during and after outages,
and leave the steps to requests."""
BUDGETS = (None, None, 0.0, 0.0005, 0.005)
"""A key's monthly budget: none, nothing at all, less than one request (>= ENGINE_S at a
dollar a second), or a few requests' worth."""
FLOAT_SLACK = 1e-9
"""For sums of the same costs added in another order (the model's against the wrapper's):
float rounding only, orders of magnitude below one request's cost (>= 1e-3)."""


class CountingFake(FakeTransport):
    """The fake engine, counting what it hands over: a plain completion of ``tokens``
    completion tokens, or a stream of ``tokens`` one-token chunks then the usage chunk
    (completion_tokens == tokens). A chunk is counted as it is yielded: once yielded, the
    wrapper holds it (no await lies between the count and the yield)."""

    def reset(self) -> None:
        super().reset()
        self.tokens = 3
        """What the next request generates."""
        self.produced = 0
        self.engine_calls = 0
        self.usage_sent = False
        """Whether the last stream handed over its usage chunk."""

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]:
        self.engine_calls += 1
        await asyncio.sleep(ENGINE_S)
        self.chat_result = completion(completion_tokens=self.tokens)
        self.produced += self.tokens
        return await super().chat(body)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]:
        self.engine_calls += 1
        self.usage_sent = False
        tokens = self.tokens
        try:
            await asyncio.sleep(ENGINE_S)
            for i in range(tokens):
                if i:  # the client may leave before the engine is done (then no usage)
                    for _ in range(PAUSE_TURNS):
                        await asyncio.sleep(0)
                self.produced += 1
                yield Reply(chunk("t"), self._facts() if i == 0 else None)
            for _ in range(PAUSE_TURNS):
                await asyncio.sleep(0)
            self.usage_sent = True
            yield Reply(usage_chunk(3, tokens), None)
        finally:
            self.streams_closed += 1


async def send(
    app: FastAPI, method: str, path: str, authorization: str | None = None, **kw: Any
) -> httpx.Response:
    """One request; an exception in the app is its 500 answer (not raised here)."""
    headers = {"Authorization": authorization} if authorization else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE_URL, headers=headers, timeout=5
    ) as client:
        return await client.request(method, path, **kw)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def error_type(response: httpx.Response) -> str:
    return str(response.json()["error"]["type"])


def assert_store_refusal(response: httpx.Response) -> None:
    """A write the store cannot take: 503 ``state_store_unavailable`` (deploy/errors.py:
    "a keyed route answers 503 rather than guess (never open, never a 500)")."""
    assert response.status_code == 503, response.text
    assert error_type(response) == "state_store_unavailable", response.text


@dataclass
class Key:
    name: str
    token: str
    budget: float | None = None
    admin: bool = False
    revoked: bool = False
    spent: float = 0.0
    """What the gateway booked for its admitted requests, all wrappers (measured)."""
    largest: float = 0.0
    """Its largest single request's booked cost."""


@dataclass
class Booking:
    """One ``Ledger.record`` call, as the gateway made it."""

    key: str
    completion_tokens: int
    cost_usd: float
    estimated: bool


@dataclass
class Booked:
    """What the ledger must hold for one name (a key, or ``anonymous``)."""

    requests: int = 0
    completion_tokens: int = 0
    estimated: int = 0
    cost_usd: float = 0.0


@dataclass
class Wrapper:
    """One wrapper app (a container) and what the model says it knows."""

    slot: int
    app: FastAPI
    started: bool = False
    read_ok: bool = False
    """It read the stored keys once (then fresh: the key grace outlasts the test)."""
    sealed: bool = False
    known: set[str] = field(default_factory=set)
    """The stored keys' names it knows (as of its last read, plus its own changes)."""
    spend_known: bool = False

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway  # type: ignore[no-any-return]

    @property
    def open(self) -> bool:
        return self.read_ok and not self.sealed


class GatewayMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="gateway-model-"))
        # Not memory://: a shutdown while the store fails spills to state_spill_dir. The
        # store itself is the injected FlakyStore; the URL only names the spill files.
        self.url = f"sqlite:///{self.tmp / 'unused.sqlite3'}"
        self.spill_dir = self.tmp / "spill"
        self.settings = make_settings(  # every wrapper's (built once: it costs ~10 requests)
            wrapper_api_key=None,
            state_url=self.url,
            state_spill_dir=self.spill_dir,
            state_sync_interval=300.0,  # no background sync: the machine syncs
            state_key_grace=3600.0,  # stored keys stay fresh through a read outage
            gpu_price_per_hour=PRICE_PER_HOUR,
            request_cost_estimate_usd=0.001,
        )
        self.store = FlakyStore()
        self.fake = CountingFake()
        self.keys: list[Key] = []  # keys[0], once made, is the admin key
        self.booked: dict[str, Booked] = defaultdict(Booked)
        self.store_keys: set[str] = set()
        self.store_sealed = False
        self.made = 0
        self.bookings: list[Booking] = []
        self.wrappers: dict[int, Wrapper] = {}  # slot -> its wrapper, once started
        self.restarts = 0

    # -- plumbing -----------------------------------------------------------------------------

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    def wrapper(self, slot: int) -> Wrapper:
        """The wrapper in ``slot`` (0 or 1); a container starts when first asked for."""
        if slot not in self.wrappers:
            self.wrappers[slot] = self._build(slot)
        return self.wrappers[slot]

    def _build(self, slot: int) -> Wrapper:
        app = create_app(self.fake, self.settings, store=self.store)
        self._spy(app.state.gateway)
        return Wrapper(slot, app)

    def _spy(self, gateway: Gateway) -> None:
        """Note every booking the gateway makes (what the ledger is told, per request)."""
        ledger = gateway.ledger
        record = ledger.record

        def spied(key: str, model: str, usage: dict[str, Any] | None, **kw: Any) -> None:
            completion = int((usage or {}).get("completion_tokens") or 0)
            self.bookings.append(
                Booking(key, completion, kw.get("cost_usd", 0.0), kw.get("estimated", False))
            )
            record(key, model, usage, **kw)

        ledger.record = spied  # type: ignore[method-assign]

    @property
    def store_up(self) -> bool:
        return not self.store.fail_reads and not self.store.fail_writes

    def _model_read(self, w: Wrapper) -> None:
        """A start or a sync read the store (keys, seal, spend), if it can be read."""
        if not self.store.fail_reads:
            w.read_ok = w.spend_known = True
            w.known = set(self.store_keys)
            w.sealed = w.sealed or self.store_sealed or bool(self.store_keys)

    def _starting(self, w: Wrapper, now: bool = False) -> None:
        """The model of ``Gateway.start``, run by the next request (or now: the lifespan)."""
        if w.started:
            return
        w.started = True
        self._model_read(w)
        if now:
            self.run(w.gateway.start())

    def _sync(self, w: Wrapper) -> bool:
        ok = self.run(w.gateway.sync())
        # Every step runs whatever the others did; each write fails while writes fail
        # (the limits are written at every sync), each read while reads fail.
        assert ok is self.store_up
        self._model_read(w)
        return bool(ok)

    def _expected_caller(self, w: Wrapper, key: Key | None, token_sent: bool) -> str | int:
        """Who ``w`` takes a request for (a name), or the status it refuses it with."""
        if w.open:
            return "anonymous"
        if key is not None and key.name in w.known:
            return key.name
        if w.read_ok or (not token_sent and w.sealed):
            return 401
        return 503  # the keys were never read: an unknown token may be a stored key

    # -- the store ----------------------------------------------------------------------------

    @rule(reads=st.booleans(), writes=st.booleans())
    def store_fails(self, reads: bool, writes: bool) -> None:
        self.store.fail_reads, self.store.fail_writes = reads, writes

    @rule()
    def store_rejects_writes(self) -> None:
        """The outage seen most: a full disk (reads work, writes fail)."""
        self.store.fail_reads, self.store.fail_writes = False, True

    @rule()
    def store_recovers(self) -> None:
        self.store.fail_reads = self.store.fail_writes = False

    @rule(slot=st.integers(0, 1))
    def sync(self, slot: int) -> None:
        self._sync(self.wrapper(slot))

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule(slot=st.integers(0, 1), start_now=st.booleans())
    def restart(self, slot: int, start_now: bool) -> None:
        """The container stops (its gateway's last flush, or the spill) and a new one
        starts on the same store, at once (the lifespan) or at its first request."""
        old = self.wrappers.get(slot)
        if old is not None:  # else: a container that never ran just starts
            old.gateway.keep_books()
            pending = bool(old.gateway.ledger.unflushed())
            self.run(old.gateway.aclose())
            spilled = list(self.spill_dir.glob(f"*-{old.gateway.writer}.json"))
            assert len(spilled) == (1 if pending and self.store.fail_writes else 0)
        self.restarts += 1
        new = self._build(slot)
        self.wrappers[slot] = new
        if start_now:
            self._starting(new, now=True)

    # -- keys ---------------------------------------------------------------------------------

    def _made(self, w: Wrapper, response: httpx.Response, budget: float | None) -> None:
        assert response.status_code == 201, response.text
        body = response.json()
        key = Key(body["name"], body["key"], budget, admin=body["role"] == "admin")
        assert body["monthly_budget_usd"] == budget
        self.keys.append(key)
        self.store_keys.add(key.name)
        self.store_sealed = w.sealed = True
        w.known.add(key.name)

    @precondition(lambda self: not self.keys)
    @rule(slot=st.integers(0, 1), budget=st.sampled_from(BUDGETS))
    def create_first_admin_key(self, slot: int, budget: float | None) -> None:
        """The first key, on an open wrapper (no token needed): the admin key. A budget
        limits its requests, not its key management."""
        w = self.wrapper(slot)
        self._starting(w)
        expected = self._expected_caller(w, None, token_sent=False)
        body: dict[str, Any] = {"name": "admin", "role": "admin"}
        if budget is not None:
            body["monthly_budget_usd"] = budget
        response = self.run(send(w.app, "POST", "/v1/keys", json=body))
        if expected != "anonymous":
            assert response.status_code == expected, response.text
        elif self.store.fail_writes:
            assert_store_refusal(response)
        else:
            self._made(w, response, budget)

    @precondition(lambda self: self.keys)
    @rule(slot=st.integers(0, 1), budget=st.sampled_from(BUDGETS))
    def create_key(self, slot: int, budget: float | None) -> None:
        w, admin = self.wrapper(slot), self.keys[0]
        self._starting(w)
        expected = self._expected_caller(w, admin, token_sent=True)
        self.made += 1
        body: dict[str, Any] = {"name": f"k{self.made}"}
        if budget is not None:
            body["monthly_budget_usd"] = budget
        response = self.run(send(w.app, "POST", "/v1/keys", bearer(admin.token), json=body))
        if isinstance(expected, int):
            assert response.status_code == expected, response.text
        elif self.store.fail_writes:
            assert_store_refusal(response)
        else:
            self._made(w, response, budget)

    @precondition(lambda self: len(self.keys) > 1)
    @rule(i=st.integers(0, 31), slot=st.integers(0, 1))
    def revoke_key(self, i: int, slot: int) -> None:
        """Revoke a key other than the admin's (a store with no admin key is locked)."""
        w, admin = self.wrapper(slot), self.keys[0]
        key = self.keys[1 + i % (len(self.keys) - 1)]
        self._starting(w)
        expected = self._expected_caller(w, admin, token_sent=True)
        response = self.run(send(w.app, "DELETE", f"/v1/keys/{key.name}", bearer(admin.token)))
        if isinstance(expected, int):
            assert response.status_code == expected, response.text
        elif key.name not in w.known:  # made elsewhere, or revoked, since w last read
            assert response.status_code == 404, response.text
        elif self.store.fail_writes:
            assert_store_refusal(response)
        else:
            assert response.status_code == 204, response.text
            key.revoked = True
            self.store_keys.discard(key.name)
            w.known.discard(key.name)

    # -- requests -----------------------------------------------------------------------------

    async def _chat(self, w: Wrapper, key: Key, kind: str, after: int, usage: bool) -> Any:
        """(status, error type, the cost the answer reported or None)."""
        body: dict[str, Any] = {"messages": MESSAGES, "max_tokens": 16}
        if kind == "chat":
            r = await send(w.app, "POST", CHAT, bearer(key.token), json=body)
            if r.status_code != 200:
                return r.status_code, error_type(r), None
            answer = r.json()
            assert answer["usage"]["completion_tokens"] == self.fake.tokens
            return 200, None, answer["vllm_autoscale"]["cost"]
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
        if kind == "stream":  # read to its end
            r = await send(w.app, "POST", CHAT, bearer(key.token), json=body)
            if r.status_code != 200:
                return r.status_code, error_type(r), None
            events = sse_data(sse_events(r.text))
            assert events[-1] == "[DONE]", events
            content = [e for e in events[:-1] if e.get("choices")]
            assert len(content) == self.fake.tokens and self.fake.usage_sent
            if not usage:
                return 200, None, None
            (last,) = [e for e in events[:-1] if not e.get("choices")]
            assert last["usage"]["completion_tokens"] == self.fake.tokens
            return 200, None, last["vllm_autoscale"]["cost"]
        sent = await drop_stream(w.app, body, key.token, after=after)  # the client leaves
        status = sent[0]["status"]
        if status != 200:
            return status, json.loads(sent[1]["body"])["error"]["type"], None
        return 200, None, None

    KEY = st.integers(0, 31)
    """A key, by its index among those made (modulo their number)."""
    TOKENS = st.integers(1, 6)

    @precondition(lambda self: self.keys)
    @rule(i=KEY, slot=st.integers(0, 1), tokens=TOKENS)
    def chat(self, i: int, slot: int, tokens: int) -> None:
        self._request(i, slot, "chat", tokens, 0, False)

    @precondition(lambda self: self.keys)
    @rule(i=KEY, slot=st.integers(0, 1), tokens=TOKENS, usage=st.booleans())
    def stream(self, i: int, slot: int, tokens: int, usage: bool) -> None:
        """A stream read to its end (the usage chunk too, when asked for)."""
        self._request(i, slot, "stream", tokens, 0, usage)

    @precondition(lambda self: self.keys)
    @rule(i=KEY, slot=st.integers(0, 1), tokens=TOKENS, after=st.integers(1, 8))
    def dropped_stream(self, i: int, slot: int, tokens: int, after: int) -> None:
        """A stream whose client leaves after ``after`` data events (or at its end)."""
        self._request(i, slot, "drop", tokens, after, False)

    def _request(self, i: int, slot: int, kind: str, tokens: int, after: int, usage: bool) -> None:
        key = self.keys[i % len(self.keys)]
        # Budgets hold per wrapper within a sync interval (docs/gateway.md): a budgeted key's
        # requests all go to wrapper 0 (any of its restarts), where "budget plus one request"
        # is exact.
        w = self.wrapper(0 if key.budget is not None else slot)
        self._starting(w)
        expected = self._expected_caller(w, key, token_sent=True)
        budgeted = expected == key.name and key.budget is not None
        self.fake.tokens = tokens
        produced, calls = self.fake.produced, self.fake.engine_calls
        self.bookings.clear()
        status, error, reported = self.run(self._chat(w, key, kind, after, usage))
        w.gateway.keep_books()  # a plain answer's books are kept at the loop's next turn
        produced = self.fake.produced - produced
        if isinstance(expected, int):
            assert status == expected, (status, error)
        elif budgeted and not w.spend_known:
            assert (status, error) == (503, "state_store_unavailable")
        elif budgeted:
            assert status in (200, 429), (status, error)
        else:
            assert status == 200, (status, error)
        if status != 200:  # refused: the engine never saw it, nothing is booked
            assert error != "internal_error"
            assert (produced, self.fake.engine_calls, self.bookings) == (0, calls, [])
            if status == 429:
                assert error == "monthly_budget_usd"
                # The wrapper knows at most what was booked: refused only once it was spent.
                assert key.budget is not None and key.spent >= key.budget - FLOAT_SLACK
            return
        # One booking, to the caller, of what the engine produced (a stream that ended
        # without the engine's usage chunk is counted by the wrapper: "estimated").
        estimated = kind != "chat" and not self.fake.usage_sent
        (booking,) = self.bookings
        assert booking == Booking(expected, produced, booking.cost_usd, estimated), booking
        cost = booking.cost_usd
        assert cost > 0
        if reported is not None:  # what the answer said it cost is what was booked
            assert cost == reported["usd"] + reported["cold_start_usd"]
        booked = self.booked[booking.key]
        booked.requests += 1
        booked.completion_tokens += produced
        booked.cost_usd += cost
        booked.estimated += estimated
        if booking.key == key.name and key.budget is not None:
            # Invariant 3: checked before the request, so admitted only while under budget;
            # the request that crosses it completes, and no other.
            assert key.spent < key.budget + FLOAT_SLACK, (key, cost)
            key.spent += cost
            key.largest = max(key.largest, cost)
            assert key.spent <= key.budget + key.largest + FLOAT_SLACK, key

    # -- invariants -----------------------------------------------------------------------------

    @precondition(lambda self: self.store_sealed)
    @rule(
        slot=st.integers(0, 1),
        scheme=st.sampled_from([None, "Bearer", "Basic"]),
        secret=st.from_regex(r"[A-Za-z0-9_-]{1,43}", fullmatch=True),
    )
    def unauthenticated_calls_are_refused(self, slot: int, scheme: str | None, secret: str) -> None:
        """Invariant 1. A wrapper that has not read the store since the first key was made
        elsewhere is still open: every wrapper sees a key within one sync
        (docs/gateway.md), the documented window; the model knows which ones those are."""
        w = self.wrapper(slot)
        self._starting(w)
        if w.open:
            return
        authorization = f"{scheme} vak-{secret}" if scheme else None
        token_sent = scheme == "Bearer"
        expected = self._expected_caller(w, None, token_sent)
        assert expected in (401, 503)
        calls = self.fake.engine_calls
        self.made += 1
        for method, path, kw in (
            ("POST", CHAT, {"json": {"messages": MESSAGES}}),
            ("GET", "/v1/keys", {}),
            ("POST", "/v1/keys", {"json": {"name": f"mallory{self.made}", "role": "admin"}}),
        ):
            response = self.run(send(w.app, method, path, authorization, **kw))
            assert response.status_code == expected, (method, path, response.text)
        assert self.fake.engine_calls == calls

    @precondition(lambda self: self.store_up and any(k.revoked for k in self.keys))
    @rule()
    def revoked_keys_are_refused_everywhere(self) -> None:
        """Invariant 4: the store is back, each wrapper syncs once: every revoked key 401."""
        for w in self.wrappers.values():
            self._starting(w)
            self._sync(w)
        calls = self.fake.engine_calls
        for key in self.keys:
            if key.revoked:
                for w in self.wrappers.values():
                    response = self.run(
                        send(w.app, "POST", CHAT, bearer(key.token), json={"messages": MESSAGES})
                    )
                    assert response.status_code == 401, (key.name, w.slot, response.text)
        assert self.fake.engine_calls == calls

    @precondition(lambda self: self.store_up)
    @rule()
    def ledger_books_what_was_produced(self) -> None:
        """Invariant 2: the spill files written back (as a start does), every wrapper
        synced, the store's ledger holds what the engine produced for admitted requests."""
        Spill(self.spill_dir, self.url).replay(self.store)
        assert not list(self.spill_dir.glob("*.json"))
        for w in self.wrappers.values():
            self._sync(w)
        rows: dict[str, Booked] = defaultdict(Booked)
        docs: dict[str, int] = defaultdict(int)
        for _, doc in self.store.items("ledger"):
            row = rows[doc["key"]]
            row.requests += doc["requests"]
            row.completion_tokens += doc["completion_tokens"]
            row.estimated += doc["estimated"]
            row.cost_usd += doc["cost_usd"]
            docs[doc["key"]] += 1
        assert sum(r.completion_tokens for r in rows.values()) == self.fake.produced
        expected = {n: b for n, b in self.booked.items() if b.requests}
        counts = {n: (b.requests, b.completion_tokens, b.estimated) for n, b in rows.items()}
        assert counts == {
            n: (b.requests, b.completion_tokens, b.estimated) for n, b in expected.items()
        }
        for name, row in rows.items():
            # Each document's cost_usd is rounded to 8 digits (ledger.py): half a unit each.
            slack = docs[name] * 5e-9 + FLOAT_SLACK
            assert abs(row.cost_usd - expected[name].cost_usd) <= slack, (name, row, expected)

    @invariant()
    def budgets_hold(self) -> None:
        """Invariant 3, for every budgeted key at every step."""
        for key in self.keys:
            if key.budget is not None:
                assert key.spent <= key.budget + key.largest + FLOAT_SLACK, key

    def teardown(self) -> None:
        try:
            for w in self.wrappers.values():
                self.run(w.gateway.aclose())
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                with contextlib.suppress(BaseException):
                    self.run(asyncio.gather(*pending, return_exceptions=True))
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


GatewayMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGateway = GatewayMachine.TestCase


def test_a_wrapper_restarted_while_the_store_takes_no_writes_knows_the_spend() -> None:
    """The machine's shortest run that once broke invariant 3, kept step by step. The first
    wrapper's spend is spilled at its shutdown (the store takes no writes); its successor
    cannot write the spill file back at start, so it must count the file's spend itself, or
    it admits a request on a budget already spent: one more per restart for as long as the
    outage lasts."""
    state = GatewayMachine()
    try:
        state.create_first_admin_key(slot=0, budget=0.0005)  # less than one request
        state.store_rejects_writes()
        state.stream(i=0, slot=0, tokens=1, usage=False)  # the budget is spent
        state.restart(slot=0, start_now=False)
        state.chat(i=0, slot=0, tokens=1)  # must be 429 monthly_budget_usd
        state.budgets_hold()
    finally:
        state.teardown()
