"""What each OpenAI route costs at the wrapper, against chat completions, side by side.

    python -m benchmarks.routes_hop [--n 4000] [--out benchmarks/results]

One zero-compute stub upstream answering every inference route; over it a wrapper serving
a chat model and an embedding model. Each route is timed straight at the stub and through
the wrapper, call by call in turn, and its added latency compared with chat completions'
(target: within 0.1 ms at p50). Writes ``routes_hop.json`` and ``routes_hop.md``.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack
from typing import Any

import httpx

from benchmarks.compare_hop import _serve
from benchmarks.run import ROOT, interleave, pct, save

ROUNDS = 5
ROUTES = {
    "chat": ("/v1/chat/completions",
             {"model": "stub", "messages": [{"role": "user", "content": "Say ok."}],
              "max_tokens": 1}),
    "completions": ("/v1/completions", {"model": "stub", "prompt": "Say ok.", "max_tokens": 1}),
    "embeddings": ("/v1/embeddings", {"model": "stub-embed", "input": "Say ok."}),
    "responses": ("/v1/responses", {"model": "stub", "input": "Say ok.",
                                    "max_output_tokens": 1}),
}  # fmt: skip


def one_round(stub: str, wrapper: str, n: int) -> dict[str, float]:
    with httpx.Client(timeout=60) as client:

        def call(url: str, route: str, body: dict[str, Any]):  # type: ignore[no-untyped-def]
            def go() -> None:
                client.post(url + route, json=body).raise_for_status()

            return go

        calls = {}
        for name, (route, body) in ROUTES.items():
            calls[f"{name}_direct"] = call(stub, route, body)
            calls[f"{name}_wrapped"] = call(wrapper, route, body)
        for _ in range(5):
            for fn in calls.values():
                fn()
        times = interleave(calls, n)
    out: dict[str, float] = {}
    for name in ROUTES:
        for q in (50, 99):
            added = pct(times[f"{name}_wrapped"], q) - pct(times[f"{name}_direct"], q)
            out[f"{name}_added_p{q}_ms"] = added * 1000
    return out


def compare(n: int) -> dict[str, Any]:
    with ExitStack() as stack:
        stub = _serve(stack, ROOT)
        wrapper = _serve(stack, ROOT, "--wrap", stub.rsplit(":", 1)[1], "--embed")
        rounds = [one_round(stub, wrapper, n // ROUNDS) for _ in range(ROUNDS)]
    out: dict[str, Any] = {"n": n, "rounds": rounds}
    for name in ROUTES:
        for q in ("p50", "p99"):
            out[f"{name}_added_{q}_ms"] = statistics.median(
                r[f"{name}_added_{q}_ms"] for r in rounds
            )
            diffs = [r[f"{name}_added_{q}_ms"] - r[f"chat_added_{q}_ms"] for r in rounds]
            out[f"{name}_minus_chat_{q}_ms"] = statistics.median(diffs)
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Each route's hop against chat completions ({r['n']} requests per path, {ROUNDS} "
        "rounds, interleaved)",
        "",
        "| route | added p50 (ms) | added p99 (ms) | p50 minus chat's (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for name, (route, _) in ROUTES.items():
        lines.append(f"| `{route}` | {r[f'{name}_added_p50_ms']:.3f} | "
                     f"{r[f'{name}_added_p99_ms']:.3f} | {r[f'{name}_minus_chat_p50_ms']:+.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000, help="requests per path, in all")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    result = compare(args.n)
    save(args.out, "routes_hop", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
