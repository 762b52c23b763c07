"""The cold fallback on the live stack: while the engine is cold, an OpenAI-compatible stub
serves (plain and streamed); the engine wakes meanwhile; once it is warm every request goes
back to it, and no request is lost across the switch."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from deploy.settings.settings import Settings
from deploy.wrapper import create_app
from tests.integration_tests.conftest import API_KEY, serve_on_stack

AUTH = {"authorization": f"Bearer {API_KEY}"}
FALLBACK_KEY = "fallback-key-" + "f" * 24


def openai_stub(seen: list[dict]) -> Starlette:
    """The smallest OpenAI-compatible endpoint: one fixed answer, plain or streamed."""

    async def chat(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {FALLBACK_KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        seen.append(body)
        head = {"id": "chatcmpl-stub", "created": 0, "model": body["model"]}
        usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "stub answer"}
            return JSONResponse({**head, "object": "chat.completion", "usage": usage,
                                 "choices": [{"index": 0, "message": message,
                                              "finish_reason": "stop"}]})  # fmt: skip

        def events():
            for text, finish in (("stub ", None), ("answer", "stop")):
                delta = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
                yield f"data: {json.dumps({**head, 'choices': [delta]})}\n\n"
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def _ask(http: httpx.Client, i: int) -> tuple[str, int, str]:
    body = {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 3}
    if i % 2:
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            text = "".join(e["choices"][0]["delta"].get("content") or ""
                           for e in events if e["choices"])  # fmt: skip
            return r.headers.get("x-served-by", "?"), r.status_code, text
    r = http.post("/v1/chat/completions", json=body)
    content = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
    return r.headers.get("x-served-by", "?"), r.status_code, content


def test_the_fallback_serves_while_cold_and_no_request_is_lost(warm_stack) -> None:
    seen: list[dict] = []
    warm_stack.call(warm_stack.transport.scale_down)
    starts = warm_stack.status()["cold_starts"]
    settings = Settings(
        wrapper_api_key=SecretStr(API_KEY), state_url="memory://",
        cold_fallback_api_key=SecretStr(FALLBACK_KEY), cold_fallback_model="stub-fallback",
        cold_fallback_url="http://placeholder/v1",
    )  # fmt: skip
    with serve_on_stack(warm_stack, openai_stub(seen)) as stub_url:
        settings = settings.model_copy(update={"cold_fallback_url": stub_url + "/v1"})
        app = create_app(warm_stack.transport, settings)
        with serve_on_stack(warm_stack, app) as url:
            results: dict[int, list[tuple[str, int, str]]] = {w: [] for w in range(4)}

            def worker(w: int) -> None:
                deadline = time.monotonic() + 300
                with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
                    i = w
                    while time.monotonic() < deadline:
                        results[w].append(_ask(http, i))
                        i += 4
                        if sum(r[0] == "engine" for r in results[w]) >= 3:
                            return
                        time.sleep(0.2)

            threads = [threading.Thread(target=worker, args=(w,)) for w in results]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            status = httpx.get(url + "/status", headers=AUTH, timeout=30).json()
        # Served without lifespan (the engine is the session's): close the fallback's
        # connections here, as the wrapper's shutdown would.
        warm_stack.call(app.state.service.cold.fallback.aclose)

    answers = [r for rs in results.values() for r in rs]
    assert all(code == 200 for _, code, _ in answers), [a for a in answers if a[1] != 200]
    served = Counter(by for by, _, _ in answers)
    assert (
        served["fallback"] > 0 and served["engine"] >= 12 and set(served) <= {"fallback", "engine"}
    )
    for rs in results.values():  # each worker: fallback first, then the engine for good
        kinds = [by for by, _, _ in rs]
        assert kinds == sorted(kinds, key=lambda k: k == "engine"), kinds
        assert kinds[0] == "fallback"
    assert all(text == "stub answer" for by, _, text in answers if by == "fallback")
    assert all(text and text != "stub answer" for by, _, text in answers if by == "engine")
    assert len(seen) == served["fallback"] == status["cold_fallback"]["served"]
    assert {body["model"] for body in seen} == {"stub-fallback"}
    assert status["state"] == "warm" and status["cold_starts"] == starts + 1  # woken, once
