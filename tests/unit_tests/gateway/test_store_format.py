"""A newer wrapper reads an older store: a SQLite store written by the gateway's code at
5469211 (before the format mark; ``tests/fixtures/store_v0_5469211.*``, made with that
commit's own code) opens with today's: its key works, its ledger reads back the same, and
the store is marked with today's format. A store marked newer is used, and said so."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr

from deploy.gateway.store import FORMAT, STATE_FORMAT, open_store
from deploy.wrapper import create_app
from tests.unit_tests.wrapper_fake import FakeTransport, client_for, make_settings

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "store_v0_5469211"


@pytest.fixture
def old_store(tmp_path: Path) -> tuple[str, dict]:
    db = tmp_path / "gateway.sqlite3"
    shutil.copy(FIXTURE.with_suffix(".sqlite3"), db)
    return f"sqlite:///{db}", json.loads(FIXTURE.with_suffix(".json").read_text())


async def test_a_store_written_before_the_format_mark_is_read_and_marked(old_store) -> None:
    url, written = old_store
    assert open_store(url).get("meta", FORMAT) is None  # as that commit left it
    app = create_app(FakeTransport(), make_settings(wrapper_api_key=None, state_url=url))
    async with client_for(app, auth=False) as client:
        await app.state.gateway.start()
        headers = {"authorization": f"Bearer {written['key']}"}
        usage = await client.get("/v1/usage", headers=headers)
        anonymous = await client.get("/v1/usage")
    assert anonymous.status_code == 401  # the old store's key closed this wrapper too
    assert usage.status_code == 200
    (row,) = usage.json()["data"]
    (old,) = written["rows"]
    for field in ("date", "key", "model", "requests", "cache_hits", "prompt_tokens",
                  "completion_tokens", "cached_tokens", "cold_starts"):  # fmt: skip
        assert row[field] == old[field], field
    # No container was metered then: the requests' own seconds and cost stand.
    assert row["gpu_seconds"] == old["gpu_seconds"] and row["cost_usd"] == old["cost_usd"]
    mark = open_store(url).get("meta", FORMAT)
    assert mark is not None and mark["version"] == STATE_FORMAT and mark["from"] == 0
    assert app.state.gateway.store_status()["format"] == STATE_FORMAT


async def test_a_store_marked_newer_is_used_and_said_so(old_store, caplog) -> None:
    url, written = old_store
    open_store(url).put_many("meta", {FORMAT: {"version": STATE_FORMAT + 1}})
    caplog.set_level(logging.WARNING, logger="vllm_autoscale.gateway")
    app = create_app(FakeTransport(), make_settings(wrapper_api_key=SecretStr("x" * 32),
                                                    state_url=url))  # fmt: skip
    await app.state.gateway.start()
    assert app.state.gateway.keys.find(written["key"]) is not None
    assert open_store(url).get("meta", FORMAT)["version"] == STATE_FORMAT + 1  # left as it is
    assert any("newer than this wrapper" in r.getMessage() for r in caplog.records)
