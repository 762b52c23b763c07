"""``vllm-autoscale usage`` and ``keys``: the gateway's routes from the command line (HTTP
through ``httpx.MockTransport``), and ``keys new``'s entries as the wrapper loads them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from deploy.gateway.keys import hash_key, load_file
from deploy.ops import cli
from tests.unit_tests.ops.cli_run import error, run

URL = "http://wrapper.test"
ADMIN = "vak-admin-secret"
ROW = {
    "date": "2025-05-01",
    "key": "alice",
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "requests": 1234,
    "cache_hits": 17,
    "prompt_tokens": 56789,
    "completion_tokens": 4321,
    "cached_tokens": 1000,
    "gpu_seconds": 42.25,
    "cold_starts": 3,
    "cost_usd": 0.0293,
}
OTHER = {**ROW, "date": "2025-05-02", "key": "bob", "requests": 7, "prompt_tokens": 11}
TOTALS = {k: v for k, v in ROW.items() if k not in ("date", "key", "model")}
TOTALS.update(requests=1241, prompt_tokens=56800, cost_usd=0.0586)
USAGE = {
    "object": "list",
    "data": [ROW, OTHER],
    "totals": TOTALS,
    "key": None,
    "start": "2025-05-01",
    "end": "2025-05-31",
}


def test_usage_table_shows_each_row_and_the_totals(wrapper, capsys) -> None:
    month = {"up_s": 900.0, "busy_s": 150.0, "boot_s": 80.0, "idle_s": 670.0,
             "cost_usd": 0.625, "allocated_usd": 0.6, "unallocated_usd": 0.025,
             "always_on_usd": 1250.0}  # fmt: skip
    gpu = {"models": {"m": {"month": month}}}
    seen = wrapper(lambda request: httpx.Response(
        200, json=gpu if request.url.path == "/v1/gpu" else USAGE))  # fmt: skip
    code, out, _ = run(
        capsys, "usage", "--url", URL, "--api-key", ADMIN, "--start", "2025-05-01",
        "--end", "2025-05-31",
    )  # fmt: skip
    assert code == 0
    request, bill = seen
    assert bill.url.path == "/v1/gpu"  # the month's bill against always-on, under the table
    assert "GPU up 900 s, 0.625 USD" in out and "idle 670 s" in out and "always on: 1,250.00" in out
    assert request.url.path == "/v1/usage"
    assert dict(request.url.params) == {"start": "2025-05-01", "end": "2025-05-31"}
    assert request.headers["authorization"] == f"Bearer {ADMIN}"
    for header in ("cache hits", "prompt tok", "completion tok", "GPU s", "boot s", "idle s",
                   "cost USD"):  # fmt: skip
        assert header in out
    lines = out.splitlines()
    [alice] = [line for line in lines if "2025-05-01" in line and "alice" in line]
    assert "1,234" in alice and "56,789" in alice and "42.2" in alice and "0.0293" in alice
    [bob] = [line for line in lines if "2025-05-02" in line]
    assert "bob" in bob and " 7 " in bob
    [totals] = [line for line in lines if "total" in line]
    assert "1,241" in totals and "56,800" in totals and "0.0586" in totals


def test_usage_passes_the_key_filter(wrapper, capsys) -> None:
    answer = {**USAGE, "data": [ROW], "key": "alice"}
    seen = wrapper(lambda request: httpx.Response(200, json=answer))
    code, out, _ = run(capsys, "usage", "--url", URL, "--key", "alice")
    assert code == 0
    assert seen[0].url.params["key"] == "alice" and "start" not in seen[0].url.params
    assert "authorization" not in seen[0].headers  # no key given, none sent
    assert "usage of alice" in out


def test_usage_json_passes_the_body_through(wrapper, capsys) -> None:
    wrapper(lambda request: httpx.Response(200, json=USAGE))
    code, out, _ = run(capsys, "usage", "--url", URL, "--json")
    assert code == 0
    assert json.loads(out) == USAGE


def test_usage_forbidden_prints_the_servers_message(wrapper, capsys) -> None:
    wrapper(lambda request: error(403, "key 'bob' may only see its own usage"))
    code, out, err = run(capsys, "usage", "--url", URL, "--api-key", "vak-bob", "--key", "alice")
    assert code == 1 and out == ""
    [line] = err.splitlines()
    assert line.startswith("error: ") and "key 'bob' may only see its own usage" in line


def test_usage_wrong_key_names_the_key_setting(wrapper, capsys) -> None:
    wrapper(lambda request: error(401, "missing or invalid API key"))
    code, _, err = run(capsys, "usage", "--url", URL, "--api-key", "wrong")
    assert code == 1
    lines = err.splitlines()
    assert "refused the API key: missing or invalid API key" in lines[0]
    assert lines[1].startswith("hint:") and "VLLM_AUTOSCALE_API_KEY" in lines[1]


def test_unreachable_wrapper_is_one_clear_line(wrapper, capsys) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    wrapper(refuse)
    code, out, err = run(capsys, "usage", "--url", URL)
    assert code == 1 and out == ""
    assert err.splitlines()[0] == f"error: cannot reach the wrapper at {URL} (ConnectError)"


def test_bad_date_is_refused_before_any_request(wrapper, capsys) -> None:
    seen = wrapper(lambda request: httpx.Response(200, json=USAGE))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["usage", "--url", URL, "--start", "May 1st"])
    assert exit_.value.code == 2 and seen == []
    assert "not a date, YYYY-MM-DD" in capsys.readouterr().err


def new_key_output(capsys, *argv: str) -> tuple[str, str]:
    """``keys new``'s key (on stderr) and the entry (alone on stdout, so that
    ``keys new NAME >> keys.toml`` appends a loadable entry)."""
    assert cli.main(["keys", "new", *argv]) == 0
    captured = capsys.readouterr()
    first = captured.err.splitlines()[0]
    assert first.startswith("key (shown once): vak-")
    return first.removeprefix("key (shown once): "), captured.out


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_keys_new_entry_loads_with_the_keys_hash(fmt, capsys, tmp_path: Path) -> None:
    key, entry = new_key_output(
        capsys, "ops", "--role", "admin", "--rpm", "60", "--tpm", "5000", "--max-streams", "4",
        "--budget", "12.5", "--format", fmt,
    )  # fmt: skip
    assert key not in entry and "vak-" not in entry
    path = tmp_path / f"keys.{fmt}"
    path.write_text(entry)
    [record] = load_file(path)
    assert record.sha256 == hash_key(key)
    assert (record.name, record.role, record.rpm, record.tpm) == ("ops", "admin", 60, 5000)
    assert (record.max_streams, record.monthly_budget_usd) == (4, 12.5)


def test_keys_new_leaves_out_limits_not_given(capsys, tmp_path: Path) -> None:
    key, entry = new_key_output(capsys, "alice")
    assert "rpm" not in entry and "budget" not in entry
    path = tmp_path / "keys.toml"
    path.write_text(entry)
    [record] = load_file(path)
    assert record.role == "user" and record.rpm is None and record.sha256 == hash_key(key)


def test_keys_new_makes_a_fresh_key_each_time(capsys) -> None:
    assert new_key_output(capsys, "a")[0] != new_key_output(capsys, "a")[0]


def test_keys_new_refuses_a_name_the_wrapper_would(capsys) -> None:
    code, out, err = run(capsys, "keys", "new", "not a name")
    assert code == 1 and "vak-" not in out
    assert err.startswith("error: name 'not a name' must be")


def test_keys_create_sends_the_body_with_the_admin_key(wrapper, capsys) -> None:
    record = {"name": "carol", "role": "user", "rpm": 30, "tpm": None, "max_streams": 2,
              "monthly_budget_usd": 5.0, "source": "store"}  # fmt: skip
    seen = wrapper(lambda request: httpx.Response(201, json={"key": "vak-new-secret", **record}))
    code, out, _ = run(
        capsys, "keys", "create", "carol", "--rpm", "30", "--max-streams", "2", "--budget", "5",
        "--url", URL, "--api-key", ADMIN,
    )  # fmt: skip
    assert code == 0
    [request] = seen
    assert (request.method, request.url.path) == ("POST", "/v1/keys")
    assert request.headers["authorization"] == f"Bearer {ADMIN}"
    assert json.loads(request.content) == {
        "name": "carol", "role": "user", "rpm": 30, "max_streams": 2, "monthly_budget_usd": 5.0,
    }  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "key (shown once): vak-new-secret"
    assert out.count("vak-new-secret") == 1
    assert "name carol" in lines[1] and "rpm 30" in lines[1] and "tpm -" in lines[1]


def test_keys_create_existing_name_shows_the_conflict(wrapper, capsys) -> None:
    wrapper(lambda request: error(409, "a key named 'carol' exists"))
    code, _, err = run(capsys, "keys", "create", "carol", "--url", URL, "--api-key", ADMIN)
    assert code == 1 and "a key named 'carol' exists" in err


def test_keys_list_is_a_table_without_secrets(wrapper, capsys) -> None:
    keys = [
        {"name": "default", "role": "admin", "rpm": None, "tpm": None, "max_streams": None,
         "monthly_budget_usd": None, "source": "config"},
        {"name": "carol", "role": "user", "rpm": 30, "tpm": 9000, "max_streams": 2,
         "monthly_budget_usd": 5.0, "source": "store", "sha256": "ab" * 32},
    ]  # fmt: skip
    seen = wrapper(lambda request: httpx.Response(200, json={"object": "list", "data": keys}))
    code, out, _ = run(capsys, "keys", "list", "--url", URL, "--api-key", ADMIN)
    assert code == 0 and seen[0].method == "GET" and seen[0].url.path == "/v1/keys"
    [carol] = [line for line in out.splitlines() if "carol" in line]
    assert "store" in carol and "9,000" in carol and "5.00" in carol
    assert any("default" in line and "config" in line for line in out.splitlines())
    assert "ab" * 32 not in out
    code, out, _ = run(capsys, "keys", "list", "--url", URL, "--api-key", ADMIN, "--json")
    assert [r["name"] for r in json.loads(out)["data"]] == ["default", "carol"]
    assert "sha256" not in out


def test_keys_revoke_deletes_by_name(wrapper, capsys) -> None:
    seen = wrapper(lambda request: httpx.Response(204))
    code, out, _ = run(capsys, "keys", "revoke", "carol", "--url", URL, "--api-key", ADMIN)
    assert code == 0 and "revoked key 'carol'" in out
    assert (seen[0].method, seen[0].url.path) == ("DELETE", "/v1/keys/carol")


def test_keys_revoke_of_a_config_key_shows_the_409_message(wrapper, capsys) -> None:
    wrapper(lambda request: error(409, "key 'default' comes from config: remove it there"))
    code, out, err = run(capsys, "keys", "revoke", "default", "--url", URL, "--api-key", ADMIN)
    assert code == 1 and out == ""
    [line] = err.splitlines()
    assert "409" in line and "key 'default' comes from config: remove it there" in line


def test_keys_revoke_unknown_name_is_the_servers_404_not_a_bad_url(wrapper, capsys) -> None:
    wrapper(lambda request: error(404, "no key named 'nobody'"))
    code, _, err = run(capsys, "keys", "revoke", "nobody", "--url", URL, "--api-key", ADMIN)
    assert code == 1 and "no key named 'nobody'" in err and "does not exist" not in err


def test_missing_route_says_the_url_is_wrong(wrapper, capsys) -> None:
    wrapper(lambda request: error(404, "Not Found"))
    code, _, err = run(capsys, "usage", "--url", URL)
    assert code == 1 and f"{URL}/v1/usage does not exist" in err


def test_status_goes_through_the_same_client(wrapper, capsys) -> None:
    status = {"state": "cold", "model": "m", "scaledown_window": 120}
    seen = wrapper(lambda request: httpx.Response(200, json=status))
    code, out, _ = run(capsys, "status", "--url", URL)
    assert code == 0 and seen[0].url.path == "/status" and "engine cold" in out
