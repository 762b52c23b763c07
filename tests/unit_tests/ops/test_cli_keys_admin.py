"""``vllm-autoscale keys update``, ``keys list`` with spend, ``keys create`` on an open
wrapper, money with the precision it needs, and a broken keys file at ``serve``: over
``httpx.MockTransport``, and end to end against a wrapper app (fake engine, memory store)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from deploy.gateway.store import MemoryStore
from deploy.ops.cli import remote
from deploy.ops.cli import serve as serve_command
from deploy.ops.cli._output import money, number
from deploy.wrapper import create_app
from tests.unit_tests.ops.cli_run import error as _error
from tests.unit_tests.ops.cli_run import run
from tests.unit_tests.wrapper_fake import FakeTransport, make_settings


def error(status: int, message: str) -> httpx.Response:
    return _error(status, message, "name")


URL = "http://wrapper.test"
ADMIN = "vak-admin-secret"
GUS = {"name": "gus", "role": "user", "rpm": 100, "tpm": None, "max_streams": None,
       "monthly_budget_usd": 0.002, "source": "store", "month_spend_usd": 0.0,
       "budget_used": 0.0}  # fmt: skip


# -- money ----------------------------------------------------------------------------------------


def test_money_prints_the_precision_an_amount_needs() -> None:
    assert number(0.002, 2) == "0.00"  # what the tables printed
    assert money(0.002) == "0.002"
    assert money(0.0293) == "0.0293" and money(0.00201234) == "0.00201"
    assert money(0.5) == "0.50" and money(0) == "0.00" and money(None) == "-"
    assert money(5) == "5.00" and money(1234.5) == "1,234.50"


def test_usage_and_cost_print_small_amounts_with_their_precision(wrapper, capsys) -> None:
    row = {"date": "2025-05-01", "key": "alice", "model": "m", "requests": 1,
           "cost_usd": 0.000123}  # fmt: skip
    answer = {"object": "list", "data": [row], "totals": {"requests": 1, "cost_usd": 0.000123}}
    wrapper(lambda request: httpx.Response(200, json=answer))
    code, out, _ = run(capsys, "usage", "--url", URL)
    assert code == 0 and out.count("0.000123") == 2  # the row and the totals
    code, out, _ = run(capsys, "cost", "--preset", "seed", "--hours", "1", "--gpu-price", "0.002")
    assert code == 0 and "GPU $0.002/h" in out


# -- keys update ----------------------------------------------------------------------------------


def test_keys_update_patches_only_what_is_given(wrapper, capsys) -> None:
    seen = wrapper(lambda request: httpx.Response(200, json=GUS))
    code, out, _ = run(
        capsys, "keys", "update", "gus", "--rpm", "100", "--budget", "0.002", "--url", URL,
        "--api-key", ADMIN,
    )  # fmt: skip
    assert code == 0
    [request] = seen
    assert (request.method, request.url.path) == ("PATCH", "/v1/keys/gus")
    assert request.headers["authorization"] == f"Bearer {ADMIN}"
    assert json.loads(request.content) == {"rpm": 100, "monthly_budget_usd": 0.002}
    assert "updated key 'gus'" in out and "secret is unchanged" in out
    assert "rpm 100" in out and "budget USD/month 0.002" in out


def test_keys_update_clears_limits_and_changes_the_role(wrapper, capsys) -> None:
    seen = wrapper(lambda request: httpx.Response(200, json=GUS))
    code, _, _ = run(
        capsys, "keys", "update", "gus", "--clear", "rpm", "--clear", "max-streams",
        "--role", "admin", "--url", URL,
    )  # fmt: skip
    assert code == 0
    assert json.loads(seen[0].content) == {"rpm": None, "max_streams": None, "role": "admin"}


def test_keys_update_with_nothing_to_change_or_a_contradiction_sends_nothing(
    wrapper, capsys
) -> None:
    seen = wrapper(lambda request: httpx.Response(200, json=GUS))
    code, _, err = run(capsys, "keys", "update", "gus", "--url", URL)
    assert code == 1 and err.startswith("error: nothing to change")
    code, _, err = run(capsys, "keys", "update", "gus", "--rpm", "5", "--clear", "rpm")
    assert code == 1 and "--rpm is both given and cleared" in err
    assert seen == []


def test_keys_update_of_a_configured_key_shows_where_it_is_configured(wrapper, capsys) -> None:
    message = (
        "key 'default' is configured (VLLM_WRAPPER_API_KEY), not made with POST /v1/keys: "
        "change its limits in VLLM_WRAPPER_API_KEY and restart the wrapper"
    )
    wrapper(lambda request: error(409, message))
    code, out, err = run(capsys, "keys", "update", "default", "--rpm", "5", "--url", URL)
    assert code == 1 and out == ""
    [line] = err.splitlines()
    assert "409" in line and "VLLM_WRAPPER_API_KEY" in line


# -- keys list with spend -------------------------------------------------------------------------


def test_keys_list_shows_the_month_s_spend_and_the_share_of_the_budget(wrapper, capsys) -> None:
    keys = [
        {**GUS, "month_spend_usd": 0.0015, "budget_used": 0.75},
        {**GUS, "name": "ops", "role": "admin", "monthly_budget_usd": None,
         "month_spend_usd": 12.345, "budget_used": None},
        {**GUS, "name": "new", "month_spend_usd": None, "budget_used": None},
    ]  # fmt: skip
    wrapper(lambda request: httpx.Response(200, json={"object": "list", "data": keys}))
    code, out, _ = run(capsys, "keys", "list", "--url", URL, "--api-key", ADMIN)
    assert code == 0 and "spent USD (month)" in out and "of budget" in out
    lines = out.splitlines()
    [gus] = [line for line in lines if "gus" in line]
    assert "0.002" in gus and "0.0015" in gus and "75%" in gus
    [ops] = [line for line in lines if " ops " in line]
    assert "12.35" in ops
    code, out, _ = run(capsys, "keys", "list", "--url", URL, "--json")
    assert json.loads(out)["data"][0]["budget_used"] == 0.75


# -- keys create on an open wrapper ---------------------------------------------------------------

CLOSED = ("the wrapper was open and is now closed: every route but / and /health needs a key "
          "from now on, on every wrapper of this store")  # fmt: skip


def test_keys_create_on_an_open_wrapper_shows_the_key_and_warns(wrapper, capsys) -> None:
    record = {**GUS, "key": "vak-first-secret", "closed_wrapper": CLOSED}
    wrapper(lambda request: httpx.Response(201, json=record))
    code, out, err = run(capsys, "keys", "create", "gus", "--url", URL)
    assert code == 0 and out.count("vak-first-secret") == 1
    assert "USER KEY (shown once" in out and "=" * 40 in out
    assert "warning: the wrapper was open and is now closed" in err
    assert "not an admin key" in err  # nobody can manage keys now


def test_keys_create_on_a_closed_wrapper_prints_as_before(wrapper, capsys) -> None:
    wrapper(lambda request: httpx.Response(201, json={**GUS, "key": "vak-new"}))
    code, out, err = run(capsys, "keys", "create", "gus", "--url", URL, "--api-key", ADMIN)
    assert code == 0 and out.splitlines()[0] == "key (shown once): vak-new"
    assert "warning" not in err


@contextlib.contextmanager
def live_wrapper(monkeypatch, **settings: Any) -> Iterator[None]:
    """The CLI's calls go to a wrapper app (fake engine, memory store) in this process."""
    monkeypatch.delenv("VLLM_AUTOSCALE_URL", raising=False)
    monkeypatch.delenv("VLLM_AUTOSCALE_API_KEY", raising=False)
    app = create_app(FakeTransport(), make_settings(**settings), store=MemoryStore())
    with TestClient(app, base_url=URL) as client:
        monkeypatch.setattr(remote, "_http_client", lambda: contextlib.nullcontext(client))
        yield


def test_the_first_key_of_an_open_wrapper_end_to_end(monkeypatch, capsys) -> None:
    with live_wrapper(monkeypatch, wrapper_api_key=None):
        code, out, err = run(capsys, "keys", "create", "ops", "--role", "admin", "--url", URL)
        assert code == 0 and "ADMIN KEY (shown once" in out
        token = next(line.strip() for line in out.splitlines() if "vak-" in line)
        assert "now closed" in err and "not an admin key" not in err
        code, _, err = run(capsys, "keys", "list", "--url", URL)
        assert code == 1 and "refused the API key" in err  # closed: a key is needed now
        code, out, _ = run(
            capsys, "keys", "update", "ops", "--budget", "0.002", "--url", URL, "--api-key", token
        )
        assert code == 0 and "budget USD/month 0.002" in out
        code, out, _ = run(capsys, "keys", "list", "--url", URL, "--api-key", token)
        [ops] = [line for line in out.splitlines() if " ops " in line]
        assert "0.002" in ops and "0%" in ops


# -- serve with a broken keys file ----------------------------------------------------------------


def test_serve_with_a_broken_keys_file_fails_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("[[keys]\nname = ")
    # Everything before the wrapper is built stood in for (no vLLM here).
    monkeypatch.setattr(serve_command, "need_extra", lambda *args: None)
    monkeypatch.setattr(serve_command, "_check_port_free", lambda *args: None)
    monkeypatch.setattr(serve_command, "configure_logging", lambda *args: None)

    def stack(**kwargs: Any) -> Any:
        return create_app(FakeTransport(), make_settings(api_keys_file=Path(path)),
                          store=MemoryStore())  # fmt: skip

    monkeypatch.setattr(serve_command, "LocalStack", stack)
    code, out, err = run(capsys, "serve", "--local")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"error: keys file {path} is neither JSON (")
    assert "nor TOML (" in lines[0] and lines[1].startswith("hint:")
    assert "Traceback" not in err
