"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, over a wrapper
on the live stack (real vLLM on CPU) that served a few requests first.

Without a key, with an unknown key and with a user's key the page shows its refusal and no
figure; with the admin key it shows the figures the JSON routes give (read here on their own
and compared, number by number, with the page's text). Its key lives in sessionStorage only:
no cookie, no key in a URL, and no Content-Security-Policy violation on the way. It writes
the screenshot in docs/images/dashboard.png.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from deploy.gateway.store import SQLiteStore
from deploy.settings.settings import Settings
from deploy.wrapper import create_app
from tests.integration_tests.conftest import API_KEY, serve_on_stack

CHROMIUM = Path("/usr/bin/chromium")
# Headless in a closed network: without these Chromium waits on connections that are refused.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
KEYS = {"alice": "alice-key-" + "a" * 32, "bob": "bob-key-" + "b" * 32}
ADMIN = {"authorization": f"Bearer {API_KEY}"}
PRICE_PER_S = 2.5 / 3600  # VLLM_GPU_PRICE_PER_HOUR's default
MIN_ADVICE_SPAN_S = 61.0  # the advisor replays no less than a minute (routes/dashboard.py)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: scripts/bootstrap.py installs it (apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture
def dashboard_wrapper(warm_stack, tmp_path) -> Iterator[str]:
    """A wrapper over the session's engine with an admin key and two user keys (budgets),
    its own store, and the overhead policy: the keys' shares are their busy seconds, which
    do not grow while the page and this test read them."""
    entries = [
        {"name": "alice", "key": KEYS["alice"], "monthly_budget_usd": 5.0},
        {"name": "bob", "key": KEYS["bob"], "monthly_budget_usd": 0.5},
    ]
    settings = Settings(
        wrapper_api_key=SecretStr(API_KEY), api_keys=SecretStr(json.dumps(entries)),
        cache_max_entries=0, gpu_cost_allocation="overhead",
    )  # fmt: skip
    app = create_app(warm_stack.transport, settings, store=SQLiteStore(tmp_path / "state.db"))
    try:
        with serve_on_stack(warm_stack, app) as url:
            yield url
    finally:  # served without lifespan: its sync stops here
        asyncio.run_coroutine_threadsafe(app.state.gateway.aclose(), warm_stack.loop).result(30)


def _serve_some_requests(url: str) -> None:
    with httpx.Client(base_url=url, timeout=120) as http:
        asks = (("alice", "Say hi."), ("alice", "Count to 3."), ("bob", "Name a fruit."))
        for who, content in asks:
            body = {"messages": [{"role": "user", "content": content}], "max_tokens": 6}
            sent = http.post("/v1/chat/completions", json=body,
                             headers={"authorization": f"Bearer {KEYS[who]}"})  # fmt: skip
            assert sent.status_code == 200, sent.text


def _json(url: str) -> dict[str, Any]:
    """What the page reads, read here on its own."""
    today = dt.datetime.now(dt.timezone.utc).date()
    month = today.replace(day=1).isoformat()
    with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as http:
        status = http.get("/status").json()
        models = list(status.get("models") or [status["model"]])
        return {
            "status": status,
            "keys": http.get("/v1/keys").json(),
            "usage": http.get(
                "/v1/usage", params={"start": month, "end": today.isoformat()}
            ).json(),
            "gpu": http.get("/v1/gpu", params={"days": 1}).json(),
            "advice": {
                m: http.get("/v1/gpu/advice", params={"model": m, "days": 7}).json() for m in models
            },
        }


_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "%": 0.01}


def _number(text: str) -> tuple[float, float]:
    """A figure as the page writes it ("$1,234.5678", "12.3 min", "4.5%", "1,024"): its value
    and half its last digit's unit (how far rounding may have moved it)."""
    match = re.fullmatch(r"\$?(-?[\d,]+(?:\.(\d+))?)(?:/h)?\s*(s|min|h|%)?", text.strip())
    assert match, f"not a figure: {text!r}"
    scale = _UNITS.get(match.group(3) or "", 1.0)
    half = 0.5 * 10 ** -len(match.group(2) or "") * scale
    return float(match.group(1).replace(",", "")) * scale, half


def _assert_shows(page: Any, name: str, expected: float, slack: float = 0.0) -> None:
    """The page's figure ``name`` is ``expected``, within its rounding (and ``slack``)."""
    text = page.locator(f'[data-figure="{name}"]').inner_text()
    value, half = _number(text)
    assert abs(value - expected) <= half + slack + 1e-9, (name, text, expected)


def _figures(page: Any) -> int:
    return page.locator("[data-figure]").count()


def _state(page: Any, state: str) -> str:
    page.wait_for_selector(f'#state[data-state="{state}"]', timeout=60_000)
    return page.locator("#state").inner_text()


def _enter(page: Any, key: str) -> None:
    page.fill("#key", key)
    page.press("#key", "Enter")


def test_the_dashboard_refuses_without_an_admin_key_and_shows_the_json_figures(
    browser, dashboard_wrapper, tmp_path
) -> None:
    url = dashboard_wrapper
    _serve_some_requests(url)
    # The advisor replays a minute at least: the engine's life must have begun that long ago.
    gpu = httpx.get(url + "/v1/gpu", headers=ADMIN, timeout=60).json()
    began = min(life["up_since"] for life in gpu["lives"])
    time.sleep(max(0.0, MIN_ADVICE_SPAN_S - (time.time() - began)))

    started = time.monotonic()
    context = browser.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
        headless=True, viewport={"width": 1280, "height": 900},
    )  # fmt: skip
    try:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))

        page.goto(url + "/dashboard")
        assert "Key required" in _state(page, "key-required")
        assert page.locator("#figures").is_hidden() and _figures(page) == 0

        _enter(page, "not-a-key-" + "x" * 32)
        assert "refused (401)" in _state(page, "refused")
        assert page.locator("#figures").is_hidden() and _figures(page) == 0
        _enter(page, KEYS["alice"])
        assert "Not an admin (403)" in _state(page, "forbidden")
        assert page.locator("#figures").is_hidden() and _figures(page) == 0
        assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

        _enter(page, API_KEY)
        _state(page, "ok")
        want = _json(url)
        elapsed = time.monotonic() - started
        _compare(page, want, slack_s=elapsed + 5)

        page.screenshot(path=str(SCREENSHOT), full_page=True)
        # The key: in this tab's sessionStorage, nowhere else.
        assert page.evaluate("Object.values(sessionStorage)") == [API_KEY]
        assert page.evaluate("document.cookie") == "" and context.cookies() == []
        assert not [u for u in requested if API_KEY in u]
        assert not [m for m in console if "Content Security Policy" in m], console
        page.reload()  # the same tab remembers it
        _state(page, "ok")
        page.click("#forget")
        assert "Key required" in _state(page, "key-required") and _figures(page) == 0
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        context.close()
    print(f"browser part: {time.monotonic() - started:.1f} s")


def _compare(page: Any, want: dict[str, Any], slack_s: float) -> None:
    """Every figure the page shows against the JSON the test read. Up-time grows while a
    container is up: those figures may differ by ``slack_s`` seconds of it."""
    status, gpu = want["status"], want["gpu"]
    models = list(status.get("models") or [status["model"]])
    for model in models:
        st = status["models"][model] if "models" in status else status
        assert page.locator(f'[data-figure="now.{model}.state"]').inner_text() == st["state"]
        for name in ("queue_depth", "in_flight", "cold_starts"):
            _assert_shows(page, f"now.{model}.{name}", st[name])
        g = gpu["models"][model]
        _assert_shows(page, f"now.{model}.price", g["price_per_hour_usd"])
        _assert_shows(page, f"now.{model}.today.up_s", g["today"]["up_s"], slack_s)
        _assert_shows(page, f"now.{model}.today.busy_s", g["today"]["busy_s"])
        month = g["month"]
        _assert_shows(page, f"spend.{model}.cost_usd", month["cost_usd"], slack_s * PRICE_PER_S)
        _assert_shows(page, f"spend.{model}.always_on_usd", month["always_on_usd"],
                      slack_s * PRICE_PER_S)  # fmt: skip
        _assert_shows(page, f"spend.{model}.allocated_usd", month["allocated_usd"])
        # The timeline: one bar per container life of the last day.
        lives = [life for life in gpu["lives"] if life["model"] == model]
        drawn = page.locator(f'#timeline-chart g.life[data-model="{model}"]')
        assert drawn.count() == len(lives) >= 1
        assert {drawn.nth(i).get_attribute("data-container") for i in range(drawn.count())} == {
            life["container"] for life in lives
        }
        for life in sorted(lives, key=lambda life: -life["up_since"])[:12]:  # the table's
            figure = f"life.{life['container']}"
            _assert_shows(page, f"{figure}.requests", life["requests"])
            if life["ready_at"] is not None:
                _assert_shows(page, f"{figure}.boot_s", life["ready_at"] - life["up_since"])
            up = (life["stopped_at"] or gpu["now"]) - life["up_since"]
            _assert_shows(page, f"{figure}.up_s", up, slack_s * (life["stopped_at"] is None))
        # The advisor: its recommendation and the figures it rests on.
        advice = want["advice"][model]
        _assert_shows(page, f"advice.{model}.requests", advice["requests"])
        assert advice["requests"] == 3 and advice["recommended"] is not None, advice
        for row in ("recommended", "current", "always_on"):
            shown = page.locator(f'[data-figure="advice.{model}.{row}.label"]').inner_text()
            assert shown == advice[row]["label"]
            monthly = advice[row]["monthly_usd"]  # scaled from a span a second or two shorter
            _assert_shows(page, f"advice.{model}.{row}.monthly_usd", monthly, 0.05 * monthly)
            _assert_shows(page, f"advice.{model}.{row}.wait_share", advice[row]["wait_share"])

    # Per key this month: tokens, requests, allocated GPU time, cost.
    rows: dict[str, dict[str, float]] = {}
    for row in want["usage"]["data"]:
        acc = rows.setdefault(row["key"], {})
        for name in ("requests", "prompt_tokens", "completion_tokens", "gpu_seconds", "cost_usd"):
            acc[name] = acc.get(name, 0) + row[name]
    assert {"alice", "bob"} <= set(rows) and rows["alice"]["requests"] == 2
    for key, figures in rows.items():
        grows = key == "(unallocated)"  # boot and idle under the overhead policy
        for name, value in figures.items():
            slack = (slack_s if name == "gpu_seconds" else slack_s * PRICE_PER_S) * grows
            _assert_shows(page, f"usage.{key}.{name}", value, slack)
    totals = want["usage"]["totals"]
    for name in ("requests", "prompt_tokens", "completion_tokens"):
        _assert_shows(page, f"usage.total.{name}", totals[name])

    # Spend against each key's budget.
    for record in want["keys"]["data"]:
        name = record["name"]
        spent = record.get("month_spend_usd")
        if spent is None:  # the page falls back on the key's usage
            spent = rows.get(name, {}).get("cost_usd", 0.0)
        # As of the wrapper's last sync, which may fall between the page's read and this one.
        _assert_shows(page, f"budget.{name}.spent", spent, 0.02 * spent)
        if record["monthly_budget_usd"] is not None:
            _assert_shows(page, f"budget.{name}.budget", record["monthly_budget_usd"])
