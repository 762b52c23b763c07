"""Key administration over the fake transport: limits changed in place (``PATCH
/v1/keys/{name}``) on this wrapper and, after a sync, on another; ``GET /v1/keys`` with each
key's spend; a budget refusal that says when it resets; keys files told apart by content; and
what a request without ``max_tokens`` holds of its key's ``tpm``."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from deploy.gateway.keys import KeyRecord, KeysFileError, hash_key, load_file
from deploy.gateway.limiter import CompletionSizes, RateLimits
from deploy.gateway.store import MemoryStore
from deploy.wrapper import create_app
from tests.unit_tests.gateway.test_gateway_trust import FlakyStore, call, chat_body, wrapper
from tests.unit_tests.wrapper_fake import (
    KEY,
    FakeTransport,
    assert_error,
    completion,
    make_settings,
)

CHAT = "/v1/chat/completions"
ADMIN: dict[str, Any] = {"wrapper_api_key": SecretStr(KEY)}


def stored(store: MemoryStore, name: str) -> dict[str, Any]:
    doc = store.get("keys", name)
    assert isinstance(doc, dict), f"the store holds no key {name!r}"
    return doc


async def make_key(app: Any, **entry: Any) -> str:
    made = await call(app, "POST", "/v1/keys", KEY, json=entry)
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


async def patch(app: Any, name: str, body: Any, token: str | None = KEY) -> Any:
    return await call(app, "PATCH", f"/v1/keys/{name}", token, json=body)


# -- PATCH /v1/keys/{name} ------------------------------------------------------------------------


async def test_a_changed_limit_holds_from_the_next_request_with_the_same_secret() -> None:
    store = MemoryStore()
    app = wrapper(store, **ADMIN)
    gus = await make_key(app, name="gus", rpm=1)
    digest = stored(store, "gus")["sha256"]
    assert (await call(app, "POST", CHAT, gus, json=chat_body())).status_code == 200
    assert_error(await call(app, "POST", CHAT, gus, json=chat_body()), 429, type_="rpm")
    changed = await patch(app, "gus", {"rpm": 100})
    assert changed.status_code == 200, changed.text
    assert changed.json()["rpm"] == 100 and "key" not in changed.json()
    assert "sha256" not in changed.json()
    assert (await call(app, "POST", CHAT, gus, json=chat_body())).status_code == 200
    doc = stored(store, "gus")
    assert doc["sha256"] == digest == hash_key(gus) and doc["rpm"] == 100


async def test_only_the_fields_given_change_and_null_is_the_default_again() -> None:
    store = MemoryStore()
    app = wrapper(store, default_rpm=7, **ADMIN)
    await make_key(app, name="hal", rpm=1, tpm=900, max_streams=2, monthly_budget_usd=3.0)
    changed = (await patch(app, "hal", {"rpm": None, "max_streams": 5})).json()
    assert (changed["rpm"], changed["tpm"], changed["max_streams"]) == (7, 900, 5)
    assert changed["monthly_budget_usd"] == 3.0 and changed["role"] == "user"
    doc = stored(store, "hal")
    assert doc["rpm"] is None and doc["tpm"] == 900  # the default stays a default
    promoted = (await patch(app, "hal", {"role": "admin", "monthly_budget_usd": 0.002})).json()
    assert promoted["role"] == "admin" and promoted["monthly_budget_usd"] == 0.002


async def test_patch_refuses_unknown_fields_configured_keys_unknown_names_and_non_admins() -> None:
    app = wrapper(MemoryStore(), **ADMIN)
    ivy = await make_key(app, name="ivy")
    assert_error(await patch(app, "ivy", {"rpm": 5, "burst": 9}), 422, param="burst")
    assert_error(await patch(app, "ivy", {"rpm": -1}), 422, param="rpm")
    assert_error(await patch(app, "ivy", {"role": None}), 422, param="role")
    error = assert_error(await patch(app, "default", {"rpm": 5}), 409, param="name")
    assert "configured" in error["message"] and "VLLM_WRAPPER_API_KEY" in error["message"]
    assert_error(await patch(app, "nobody", {"rpm": 5}), 404, param="name")
    assert_error(await patch(app, "ivy", {"rpm": 5}, token=ivy), 403)
    assert_error(await patch(app, "ivy", {"rpm": 5}, token=None), 401)


async def test_patch_with_the_store_down_answers_503_and_changes_nothing() -> None:
    store = FlakyStore()
    app = wrapper(store, **ADMIN)
    await make_key(app, name="jan", rpm=1)
    store.fail_writes = True
    error = assert_error(await patch(app, "jan", {"rpm": 50}), 503)
    assert error["type"] == "state_store_unavailable" and "memory://" in error["message"]
    store.fail_writes, store.fail_reads = False, True
    assert_error(await patch(app, "jan", {"rpm": 50}), 503)
    store.fail_reads = False
    assert stored(store, "jan")["rpm"] == 1
    assert app.state.gateway.keys.get("jan").rpm == 1


async def test_another_wrapper_over_the_store_takes_the_change_at_its_next_sync() -> None:
    store, fake = MemoryStore(), FakeTransport()
    one, two = wrapper(store, fake, **ADMIN), wrapper(store, fake, **ADMIN)
    kim = await make_key(one, name="kim", rpm=1)
    assert (await call(two, "POST", CHAT, kim, json=chat_body())).status_code == 200
    assert_error(await call(two, "POST", CHAT, kim, json=chat_body()), 429, type_="rpm")
    assert (await patch(one, "kim", {"rpm": 100})).status_code == 200
    assert_error(await call(two, "POST", CHAT, kim, json=chat_body()), 429)  # not synced yet
    assert await two.state.gateway.sync()
    assert (await call(two, "POST", CHAT, kim, json=chat_body())).status_code == 200


def test_a_lowered_limit_counts_what_the_key_took_this_minute() -> None:
    """The limit's counters are named without its amount: lowering rpm from 100 to 3 after 3
    requests refuses the fourth (a counter per amount would start again from 0)."""
    limits = RateLimits()
    for _ in range(3):
        limits.admit(KeyRecord("lee", "0" * 64, rpm=100), 1, 0)
    lowered = KeyRecord("lee", "0" * 64, rpm=3)
    with pytest.raises(Exception, match="requests per minute"):
        limits.admit(lowered, 1, 0)


# -- GET /v1/keys: spend against budget -----------------------------------------------------------


async def test_keys_list_shows_each_key_s_month_spend_and_the_share_of_its_budget() -> None:
    app = wrapper(MemoryStore(), **ADMIN)
    mia = await make_key(app, name="mia", monthly_budget_usd=50.0)
    assert (await call(app, "POST", CHAT, mia, json=chat_body())).status_code == 200
    listed = (await call(app, "GET", "/v1/keys", KEY)).json()["data"]
    keys = {k["name"]: k for k in listed}
    spent = keys["mia"]["month_spend_usd"]
    assert spent > 0 and keys["mia"]["budget_used"] == pytest.approx(spent / 50.0, rel=1e-3)
    assert keys["default"]["month_spend_usd"] == 0 and keys["default"]["budget_used"] is None


# -- a budget refusal says when it resets ---------------------------------------------------------


async def test_a_budget_refusal_names_the_utc_reset_and_keeps_retry_after_in_seconds() -> None:
    app = wrapper(MemoryStore(), **ADMIN)
    ned = await make_key(app, name="ned", monthly_budget_usd=0)
    now = datetime(2026, 12, 15, 12, 0, tzinfo=timezone.utc).timestamp()
    app.state.gateway.clock = lambda: now
    refused = await call(app, "POST", CHAT, ned, json=chat_body())
    error = assert_error(refused, 429, type_="monthly_budget_usd")
    assert "resets 2027-01-01T00:00:00Z" in error["message"]
    assert int(refused.headers["retry-after"]) == 16 * 86400 + 12 * 3600


# -- a keys file's format from its content --------------------------------------------------------

TOML_KEYS = 'name = "ops"\nsha256 = "{}"\nrole = "admin"\nrpm = 60\n'.format("ab" * 32)
ENTRY = {"name": "ops", "sha256": "ab" * 32, "role": "admin", "rpm": 60}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("keys.txt", "[[keys]]\n" + TOML_KEYS),
        ("keys", json.dumps([ENTRY])),
        ("keys.toml", json.dumps({"keys": [ENTRY]})),
    ],
)
def test_a_keys_file_loads_by_its_content_whatever_its_name(
    name: str, text: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_text(text)
    [record] = load_file(path)
    assert (record.name, record.role, record.rpm, record.sha256) == ("ops", "admin", 60, "ab" * 32)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[keys]\nname = ", "neither JSON (Expecting value"),
        ('[{"name": "ops", "sha256": "xyz"}]', "entry 0 (ops): sha256 must be 64 hex digits"),
        ('{"keys": 5}', "holds no list of key entries"),
    ],
)
def test_a_broken_keys_file_is_one_line_naming_the_file(
    text: str, says: str, tmp_path: Path
) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(text)
    with pytest.raises(KeysFileError) as caught:
        load_file(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and says in message
    if "neither" in says:
        assert "nor TOML (" in message
    # The wrapper reads it at start: the same one line, from building the app.
    with pytest.raises(KeysFileError, match="keys file"):
        create_app(FakeTransport(), make_settings(api_keys_file=path), store=MemoryStore())


def test_a_missing_keys_file_is_one_line_too(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match=r"keys file .*nowhere\.toml cannot be read"):
        load_file(tmp_path / "nowhere.toml")


# -- tpm without max_tokens -----------------------------------------------------------------------


def tpm_app(fake: FakeTransport | None = None, tpm: int = 500, **settings: Any) -> Any:
    entries = [{"name": "olga", "key": "olga-" + "o" * 40, "tpm": tpm}]
    return wrapper(MemoryStore(), fake, api_keys=SecretStr(json.dumps(entries)), **settings)


OLGA = "olga-" + "o" * 40


async def test_a_500_tpm_key_makes_several_small_calls_without_max_tokens_in_a_minute() -> None:
    """Each call uses 12 tokens. Reserving the output cap the engine would apply (the rest of
    the context, or 1024) took the whole minute: the second call was refused."""
    app = tpm_app()
    statuses = [(await call(app, "POST", CHAT, OLGA, json=chat_body())).status_code
                for _ in range(8)]  # fmt: skip
    assert statuses == [200] * 8


async def test_a_completion_over_its_hold_becomes_the_key_s_debt() -> None:
    fake = FakeTransport()
    app = tpm_app(fake)
    assert (await call(app, "POST", CHAT, OLGA, json=chat_body())).status_code == 200
    fake.chat_result = completion(prompt_tokens=7, completion_tokens=300)  # held: about 13
    assert (await call(app, "POST", CHAT, OLGA, json=chat_body())).status_code == 200
    refused = await call(app, "POST", CHAT, OLGA, json=chat_body())
    assert_error(refused, 429, type_="tpm")
    # About 290 tokens owed at 500 a minute: paid in about 35 s.
    assert 20 <= int(refused.headers["retry-after"]) <= 40


def test_an_uncapped_request_holds_a_realistic_completion() -> None:
    gateway = tpm_app().state.gateway
    body = {"messages": [{"role": "user", "content": "hi"}]}
    prompt = gateway.reserve({**body, "max_tokens": 1}) - 1
    assert gateway.reserve(body, "olga") == prompt + 256  # before any history
    for tokens in range(1, 101):
        gateway.completions.add("olga", tokens)
    assert gateway.reserve(body, "olga") == prompt + 95  # the last 100's 95th percentile
    assert gateway.reserve(body, "someone") == prompt + 256  # per key
    assert gateway.reserve({**body, "n": 2}, "olga") == prompt + 2 * 95
    assert gateway.reserve({**body, "max_tokens": 600}, "olga") == prompt + 600  # its own cap


def test_the_setting_and_the_context_bound_the_hold() -> None:
    fixed = tpm_app(tpm_completion_reserve=40).state.gateway
    body = {"messages": [{"role": "user", "content": "hi"}]}
    prompt = fixed.reserve({**body, "max_tokens": 1}) - 1
    fixed.completions.add("olga", 5000)
    assert fixed.reserve(body, "olga") == prompt + 40
    small = tpm_app(max_model_len=256).state.gateway
    long = {"messages": [{"role": "user", "content": "x" * 800}]}
    assert small.reserve({**long, "max_tokens": 1}) - 1 > 256 - 100  # less than 256 left
    assert small.reserve(long, "olga") == 256  # the prompt and the rest of the context


async def test_settled_requests_feed_their_key_s_history() -> None:
    fake = FakeTransport()
    app = tpm_app(fake)
    fake.chat_result = completion(completion_tokens=40)
    for _ in range(3):
        assert (await call(app, "POST", CHAT, OLGA, json=chat_body())).status_code == 200
    app.state.gateway.keep_books()
    assert app.state.gateway.completions.p95("olga") == 40


def test_completion_sizes_keep_the_last_hundred_and_split_a_batch() -> None:
    sizes = CompletionSizes(keep=100, first=256)
    assert sizes.p95("a") == 256
    sizes.add("a", 1000)
    for _ in range(100):
        sizes.add("a", 10)
    assert sizes.p95("a") == 10  # the 1000 fell out
    sizes.add("b", 90, requests=3)
    assert sizes.p95("b") == 30
