"""The CLI's tests: its HTTP calls to a wrapper routed to a handler in the test."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from deploy.ops.cli import remote


@pytest.fixture
def wrapper(monkeypatch) -> Callable[[Callable[[httpx.Request], httpx.Response]], list]:
    """Route the CLI's HTTP calls to a handler; returns the requests it saw."""
    monkeypatch.delenv("VLLM_AUTOSCALE_URL", raising=False)
    monkeypatch.delenv("VLLM_AUTOSCALE_API_KEY", raising=False)
    seen: list[httpx.Request] = []

    def install(handler: Callable[[httpx.Request], httpx.Response]) -> list[httpx.Request]:
        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        transport = httpx.MockTransport(record)
        monkeypatch.setattr(remote, "_http_client", lambda: httpx.Client(transport=transport))
        return seen

    return install
