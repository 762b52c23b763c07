"""What routing among several models costs at the wrapper, side by side.

    python -m benchmarks.routing_hop [--n 6000] [--models 8] [--out benchmarks/results]

One zero-compute stub upstream; over it a wrapper serving one model and a wrapper serving
``--models`` models (each its own transport), timed call by call in turn. The several-model
wrapper is asked for its last model (a name looked up, not the default). Reports each path's latency added over the stub and the difference. Writes
``routing_hop.json`` and ``routing_hop.md``.
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


def one_round(paths: dict[str, str], n: int, last: str) -> dict[str, float]:
    prompt = [{"role": "user", "content": "Say ok."}]
    bodies = {"direct": "stub", "one": "stub", "many": last}

    def call(client: httpx.Client, url: str, model: str):
        body = {"model": model, "messages": prompt, "max_tokens": 1}

        def go() -> None:
            client.post(url + "/v1/chat/completions", json=body).raise_for_status()

        return go

    with httpx.Client(timeout=60) as client:
        calls = {name: call(client, paths[name], bodies[name]) for name in bodies}
        for _ in range(5):
            for fn in calls.values():
                fn()
        times = interleave(calls, n)
    out = {f"{k}_p{q}_ms": pct(v, q) * 1000 for k, v in times.items() for q in (50, 99)}
    for name in ("one", "many"):
        for q in ("p50", "p99"):
            out[f"{name}_added_{q}_ms"] = out[f"{name}_{q}_ms"] - out[f"direct_{q}_ms"]
    return out


def compare(n: int, models: int) -> dict[str, Any]:
    with ExitStack() as stack:
        stub = _serve(stack, ROOT)
        port = stub.rsplit(":", 1)[1]
        paths = {
            "direct": stub,
            "one": _serve(stack, ROOT, "--wrap", port),
            "many": _serve(stack, ROOT, "--wrap", port, "--models", str(models)),
        }
        rounds = [one_round(paths, n // ROUNDS, f"stub-{models}") for _ in range(ROUNDS)]
    out: dict[str, Any] = {"n": n, "models": models, "rounds": rounds}
    for q in ("p50", "p99"):
        for name in ("one", "many"):
            out[f"{name}_added_{q}_ms"] = statistics.median(
                r[f"{name}_added_{q}_ms"] for r in rounds
            )
        diffs = [r[f"many_added_{q}_ms"] - r[f"one_added_{q}_ms"] for r in rounds]
        out[f"many_minus_one_{q}_ms"] = statistics.median(diffs)
        out[f"many_minus_one_{q}_spread_ms"] = max(diffs) - min(diffs)
    return out


def markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        f"# Routing among models: one model vs {r['models']} ({r['n']} requests per path, "
        f"{ROUNDS} rounds, interleaved)",
        "",
        "| added over the stub | p50 (ms) | p99 (ms) |",
        "| --- | --- | --- |",
        f"| one model | {r['one_added_p50_ms']:.3f} | {r['one_added_p99_ms']:.3f} |",
        f"| {r['models']} models, the last one asked for | {r['many_added_p50_ms']:.3f} | "
        f"{r['many_added_p99_ms']:.3f} |",
        f"| difference (median of rounds; spread) | {r['many_minus_one_p50_ms']:+.3f} "
        f"({r['many_minus_one_p50_spread_ms']:.3f}) | {r['many_minus_one_p99_ms']:+.3f} "
        f"({r['many_minus_one_p99_spread_ms']:.3f}) |",
    ]) + "\n"  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=6000, help="requests per path, in all")
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    result = compare(args.n, args.models)
    save(args.out, "routing_hop", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
