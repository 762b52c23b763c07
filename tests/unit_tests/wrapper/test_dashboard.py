"""The dashboard offline: the page and its two assets are served from the package with a
strict policy and hold no figure; ``GET /v1/gpu/advice`` is the admin's and replays the
recorded arrivals with the advisor's own code."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from deploy.core.advisor import CostInputs, Trace, recommend, sweep
from deploy.core.contract import Facts
from deploy.wrapper.routes import dashboard
from tests.unit_tests.wrapper_fake import BASE_URL, KEY, MODEL, fresh_app, make_settings

FILES = Path(dashboard.__file__).resolve().parent.parent / "dashboard"
USER = "user-" + "u" * 40
PAGES = {
    "/dashboard": ("index.html", "text/html"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css"),
}


@pytest.fixture
def app_and_fake() -> tuple[FastAPI, Any]:
    entries = [{"name": "user", "key": USER}]
    return fresh_app(api_keys=SecretStr(json.dumps(entries)))


async def _get(app: FastAPI, path: str, token: str | None = None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=5) as client:
        return await client.get(path, headers=headers, params=params)


# -- the page --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PAGES))
async def test_the_page_and_its_assets_come_from_the_package_with_a_strict_policy(
    app_and_fake, path: str
) -> None:
    app, _ = app_and_fake
    name, media_type = PAGES[path]
    response = await _get(app, path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (FILES / name).read_bytes()
    csp = [p.strip() for p in response.headers["content-security-policy"].split(";")]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "style-src 'self'" in csp and "connect-src 'self'" in csp
    assert {"form-action 'none'", "frame-ancestors 'none'", "base-uri 'none'"} <= set(csp)
    assert "unsafe" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("token", [None, KEY, USER, "not-a-key"])
async def test_the_page_is_the_same_bytes_whoever_asks(app_and_fake, token) -> None:
    """It carries no figure: no key needed, and a user's (or a wrong) key changes nothing."""
    app, _ = app_and_fake
    response = await _get(app, "/dashboard", token)
    assert response.status_code == 200
    assert response.content == (FILES / "index.html").read_bytes()


def test_the_page_holds_no_inline_script_style_or_outside_reference() -> None:
    html = (FILES / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="/dashboard/dashboard.js" defer', "")]
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handler
    assert re.search(r'<input id="key" type="password"', html)
    assert 'name="' not in html.split("<body>")[1]  # the key field is never a form field
    script = (FILES / "dashboard.js").read_text()
    css = (FILES / "dashboard.css").read_text()
    for text in (html, script, css):
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, urls  # SVG's namespace name
        assert "@import" not in text and "url(" not in text
    # The key: sessionStorage and the Authorization header only.
    assert "sessionStorage" in script and "localStorage" not in script
    assert "document.cookie" not in script and 'credentials: "omit"' in script
    assert '"Bearer " + key' in script and "innerHTML" not in script and "eval(" not in script


async def test_the_page_is_left_out_of_the_schema_and_the_advice_is_in_it(app_and_fake) -> None:
    app, _ = app_and_fake
    paths = (await _get(app, "/openapi.json", KEY)).json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]
    assert "/v1/gpu/advice" in paths


async def test_html_is_the_route_only_under_dashboard(app_and_fake) -> None:
    app, _ = app_and_fake
    for path in ("/dashboard/index.html", "/dashboard/app.py", "/dashboard/"):
        assert (await _get(app, path)).status_code in (404, 307), path


# -- the advisor over recorded traffic ---------------------------------------------------------


async def test_advice_is_the_admins(app_and_fake) -> None:
    app, _ = app_and_fake
    assert (await _get(app, "/v1/gpu/advice")).status_code == 401
    refused = await _get(app, "/v1/gpu/advice", USER)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert (await _get(app, "/v1/gpu/advice", KEY, model="nope")).status_code == 404
    assert (await _get(app, "/v1/gpu/advice", KEY, days=0)).status_code == 422


async def test_advice_reads_the_arrivals_the_meter_recorded(app_and_fake) -> None:
    app, fake = app_and_fake
    now = time.time()
    fake.facts = Facts(container="c-1", booted_at=now - 5, up_since=now - 35, engine_s=0.01)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        for _ in range(3):
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            sent = await client.post("/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
            assert sent.status_code == 200
    answer = (await _get(app, "/v1/gpu/advice", KEY)).json()
    assert answer["model"] == MODEL and answer["requests"] == 3
    assert answer["boots_recorded"] == 1 and answer["boot_seconds"] == pytest.approx(30, abs=0.01)
    # The container came up 35 s ago: too little traffic to scale to a month.
    assert answer["recommended"] is None and "too little" in answer["reason"]
    assert answer["current"]["scaledown_window"] == 120


def _served(**settings: Any) -> SimpleNamespace:
    return SimpleNamespace(name=MODEL, settings=make_settings(**settings))


def test_advice_replays_the_trace_with_the_advisors_code() -> None:
    now = 1_800_000_000.0
    since = now - 7 * 86400
    arrivals = [now - 3 * 86400 + i * 900 for i in range(40)]  # every 15 min for 10 h
    answer = dashboard.advice(arrivals, [40.0, 50.0, 60.0], now - 4 * 86400, _served(), 120.0,
                              since, now, 0.05)  # fmt: skip
    trace = Trace(tuple(arrivals), now - 4 * 86400, now)  # from the first life recorded
    inputs = CostInputs(2.5, 1, scaledown_window=120.0, boot_seconds=50.0)
    rows = sweep(trace, inputs)
    best = recommend(rows, 0.05)
    assert answer["boot_seconds"] == 50.0 and answer["span_s"] == 4 * 86400
    assert answer["recommended"]["label"] == best.row.label
    assert answer["recommended"]["monthly_usd"] == best.row.monthly
    assert answer["reason"] == best.reason and answer["recommended"]["fits"] is True
    current = next(r for r in rows if r.window == 120.0)
    assert answer["current"]["monthly_usd"] == current.monthly
    assert answer["current"]["wait_share"] == current.wait_share == 1.0  # 15 min apart: all wait
    assert answer["always_on"]["monthly_usd"] == 2.5 * 24 * 30
    assert answer["always_on"]["wait_share"] == 0.0


def test_advice_keeps_the_models_warm_schedule_and_assumes_a_boot_when_none_recorded() -> None:
    now = 1_800_000_000.0
    arrivals = [now - 86400 + i * 60 for i in range(100)]
    schedule = "0 9 * * mon-fri 9h UTC"
    served = _served(warm_schedule=schedule, scaledown_window=300)
    answer = dashboard.advice(arrivals, [], None, served, 300.0, now - 7 * 86400, now, 0.05)
    assert answer["boots_recorded"] == 0 and answer["boot_seconds"] == 90.0
    assert answer["span_s"] == 86400  # from the first arrival: nothing recorded before it
    assert answer["current"]["warm_schedule"] == schedule
    assert answer["current"]["schedule"] and answer["current"]["window"] == 300.0
    no_traffic = dashboard.advice([], [], None, served, 300.0, now - 86400, now, 0.05)
    assert no_traffic["recommended"] is None and no_traffic["requests"] == 0


def test_an_engine_kept_up_is_currently_always_on() -> None:
    now = 1_800_000_000.0
    arrivals = [now - 3600 + i * 60 for i in range(50)]
    answer = dashboard.advice(arrivals, [], None, _served(), None, now - 86400, now, 0.05)
    assert answer["current"]["scaledown_window"] is None
    assert answer["current"]["label"] == answer["always_on"]["label"] == "always on"
